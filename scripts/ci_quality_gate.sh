#!/usr/bin/env bash
# A CI job for a fine-tuned classifier: validate -> prepare -> train -> eval, failing the job when
# the model is worse than a threshold. Copy it into your pipeline.
#
#   bash scripts/ci_quality_gate.sh [CONFIG] [--set KEY=VALUE ...] [REQUIREMENT...]
#   bash scripts/ci_quality_gate.sh configs/quickstart.yaml 'f1>=0.85' 'accuracy>=0.78'
#   bash scripts/ci_quality_gate.sh my.yaml --set train.max_steps=50 'f1_macro>=0.6'
#
# The requirements' metric names are checked (`ftcli validate`) before anything trains. The run is
# trained into a folder of its own, $RESULTS/run (default: ci-results/run), so the job never
# replaces a run of the config's own output_dir. --set options apply to every step.
#
# Exit status: 0 passed, 2 bad input (config/data/requirement), 3 quality gate failed, 1 anything
# else. Machine-readable results are left in $RESULTS: train.json and eval.json (on exit 2 from
# eval, eval.json holds {"error": ..., "exit_code": 2}).
set -euo pipefail
config="configs/quickstart.yaml"
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ] && [ "${1#*[<>=]}" = "$1" ]; then
    config="$1"  # the first argument, unless it is an option or a requirement
    shift
fi
sets=()
requirements=()
while [ $# -gt 0 ]; do
    case "$1" in
        --set|-s)
            [ $# -ge 2 ] || { echo "error: $1 needs KEY=VALUE" >&2; exit 2; }
            sets+=(--set "$2"); shift 2 ;;
        --set=*) sets+=(--set "${1#--set=}"); shift ;;
        -*) echo "error: unknown option $1 (give CONFIG, --set KEY=VALUE and requirements such as 'f1>=0.85')" >&2
            exit 2 ;;
        *) requirements+=("$1"); shift ;;
    esac
done
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
trap 'rm -f "$results/.train.json" "$results/.eval.json"' EXIT  # no half-written results
rm -f "$results/train.json" "$results/eval.json"  # a previous job's results must not pass for this one's
sets+=(--set "train.output_dir=$results/run")
gate=()
for r in "${requirements[@]}"; do gate+=(--require "$r"); done

ftcli validate --config "$config" "${sets[@]}" "${gate[@]}"
ftcli prepare --config "$config" "${sets[@]}" --quiet
# --overwrite: the CI folder may hold the previous job's run; --quiet: plain log lines.
ftcli train --config "$config" "${sets[@]}" --overwrite --quiet --json > "$results/.train.json"
mv "$results/.train.json" "$results/train.json"
status=0
ftcli eval --config "$config" "${sets[@]}" --json "${gate[@]}" > "$results/.eval.json" || status=$?
mv "$results/.eval.json" "$results/eval.json"
[ "$status" -eq 0 ] || [ "$status" -eq 3 ] || exit "$status"  # bad input or a crash: ftcli said why
python3 - "$results/eval.json" "$status" <<'PY'
import json, sys
result, status = json.load(open(sys.argv[1])), int(sys.argv[2])
shown = ", ".join(f"{g['metric']}={g['value']:.4f} ({g['op']} {g['bound']:g}{'' if g['passed'] else ': missed'})"
                  for g in result["gate"])
print(f"{'PASSED' if status == 0 else 'FAILED'}: {result['split']} {shown} ({result['model']})")
PY
exit "$status"
