#!/usr/bin/env bash
# Install the lowest versions pyproject.toml allows (its `>=` floors) into .venv-min and run the
# fast tests there: the floors are claims, and this checks them. Not part of CI (installing takes
# minutes); run it after raising or lowering a floor.
#
#   bash scripts/test_min_versions.sh [pytest arguments]
#
# torch stays at the version scripts/setup.sh installs (FTCLI_TORCH_VERSION): an old torch from
# PyPI is a multi-GB CUDA build, so the torch floor is checked where a CPU index is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv-min
. .venv-min/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q "torch==${FTCLI_TORCH_VERSION:-2.13.0}"
mapfile -t floors < <(python - <<'PY'
import re, tomllib

project = tomllib.load(open("pyproject.toml", "rb"))["project"]
for dep in project["dependencies"] + project["optional-dependencies"]["test"]:
    name, op, version = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*(>=|==)\s*([0-9.]+)", dep).groups()
    if name != "torch":
        print(f"{name}=={version}")
PY
)
echo "installing: ${floors[*]}"
python -m pip install -q "${floors[@]}"
python -m pip install -q --no-deps -e .
python -m pip list 2>/dev/null | grep -iE '^(transformers|datasets|accelerate|evaluate|tokenizers|huggingface.hub|numpy|pyarrow|torch|pydantic|typer) '
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python -m pytest -q -p no:cacheprovider -m "not slow" "$@"
