#!/usr/bin/env bash
# The quickstart, on a fresh machine, offline: set up .venv, then prepare -> train -> eval
# all-MiniLM-L6-v2 on GLUE MRPC (configs/quickstart.yaml). 4-10 minutes on 2 CPU cores (bf16 vs fp32 CPUs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh quickstart
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
ftcli prepare --config configs/quickstart.yaml
ftcli train --config configs/quickstart.yaml --overwrite
ftcli eval --config configs/quickstart.yaml
