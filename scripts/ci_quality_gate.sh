#!/usr/bin/env bash
# A CI job for a fine-tuned classifier: prepare -> train -> eval, failing the job when the model
# is worse than a threshold. Copy it into your pipeline.
#
#   bash scripts/ci_quality_gate.sh [CONFIG] [REQUIREMENT...]
#   bash scripts/ci_quality_gate.sh configs/quickstart.yaml 'f1>=0.85' 'accuracy>=0.78'
#
# Exit status: 0 passed, 2 bad input (config/data), 3 quality gate failed, 1 anything else.
# Machine-readable results are left in $RESULTS (default: ci-results/): train.json, eval.json.
set -euo pipefail
config="${1:-configs/quickstart.yaml}"
shift || true
requirements=("$@")
[ ${#requirements[@]} -gt 0 ] || requirements=("f1>=0.85")
results="${RESULTS:-ci-results}"
if ! command -v ftcli >/dev/null 2>&1; then
    # A fresh shell in this repository: use the .venv that scripts/setup.sh made.
    venv="$(cd "$(dirname "$0")/.." && pwd)/.venv"
    if [ -x "$venv/bin/ftcli" ]; then
        . "$venv/bin/activate"
    else
        echo "error: ftcli is not installed here; run 'bash scripts/setup.sh' (or pip install ftcli) first" >&2
        exit 1
    fi
fi
mkdir -p "$results"

ftcli prepare --config "$config" --quiet
# --overwrite: a CI workspace may hold the previous job's run; --quiet: plain log lines.
ftcli train --config "$config" --overwrite --quiet --json > "$results/train.json"
gate=()
for r in "${requirements[@]}"; do gate+=(--require "$r"); done
status=0
ftcli eval --config "$config" --json "${gate[@]}" > "$results/eval.json" || status=$?
[ "$status" -eq 0 ] || [ "$status" -eq 3 ] || exit "$status"  # bad input or a crash: ftcli said why
python3 - "$results/eval.json" "$status" <<'PY'
import json, sys
result, status = json.load(open(sys.argv[1])), int(sys.argv[2])
shown = ", ".join(f"{k}={result[k]:.4f}" for k in ("accuracy", "f1", "matthews_correlation", "pearson") if k in result)
print(f"{'PASSED' if status == 0 else 'FAILED'}: {result['split']} {shown} ({result['model']})")
PY
exit "$status"
