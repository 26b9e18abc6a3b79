#!/usr/bin/env bash
# Create .venv (if missing) and install ftcli with the extras named in $1 (default: quickstart).
# torch is installed first and pinned: an unpinned torch would pull a multi-GB CUDA build on a
# CPU-only machine.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-quickstart}"
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==${FTCLI_TORCH_VERSION:-2.13.0}"
python -m pip install -q -e ".[${extras}]"
