#!/usr/bin/env bash
# Create .venv (if missing) and install ftcli with the extras named in $1 (default: quickstart).
# torch is installed first and pinned: an unpinned torch would pull a multi-GB CUDA build on a
# CPU-only machine. Everything else is installed at the versions in constraints.txt, the ones the
# suite and the README's figures were measured with; FTCLI_CONSTRAINTS= (empty) installs the
# newest versions pyproject.toml allows instead.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-quickstart}"
constraints="${FTCLI_CONSTRAINTS-constraints.txt}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==${FTCLI_TORCH_VERSION:-2.13.0}"
python -m pip install -q ${constraints:+-c "$constraints"} -e ".[${extras}]"
