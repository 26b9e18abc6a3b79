#!/usr/bin/env bash
# Set up a virtual environment (.venv) and run the whole test suite, offline, on CPU.
# Usage: bash scripts/test.sh [pytest arguments]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh test
. .venv/bin/activate
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# One pytest worker per core (pytest-xdist): most tests wait on process start-up and on the tiny
# model's Python-bound steps, so two workers on 2 cores finish in ~3/4 of the time. `-n 0` runs
# them in one process. `worksteal`: a worker that runs out of tests takes queued ones from the
# other (a long 2-process test near the end otherwise leaves one core idle). One torch thread
# per process: with a worker per core, more threads only wait on each other (the tiny model has nothing to split); set OMP_NUM_THREADS to change it.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python -m pytest -n auto --dist worksteal "$@"
