#!/usr/bin/env bash
# Opt-in (not in CI): ftcli's XLA (TPU) path, exercised on the CPU through torch-xla's PJRT CPU
# device. torch-xla 2.9 needs torch 2.9, so this uses its own venv, .venv-xla (torch 2.9 from PyPI
# is the CUDA build: about 3 GB to download once). Trains 12 steps of a tiny random BERT with
# bucketed padding (static shapes), exports it and evaluates it on XLA.
#
#   bash scripts/xla_cpu_smoke.sh
#
# Known limit (Accelerate 1.15): accelerator.save_state() fails on XLA (its loader wrapper has no
# `.dataset`), so checkpoints are off here (train.checkpoint_every: null).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
if [ ! -x .venv-xla/bin/python ]; then
    python3 -m venv .venv-xla
fi
.venv-xla/bin/python -m pip install -q --upgrade pip
.venv-xla/bin/python -m pip install -q "torch==2.9.0" "torch_xla==2.9.0"
.venv-xla/bin/python -m pip install -q -c constraints.txt -e ".[test]" "torch==2.9.0"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
export PJRT_DEVICE=CPU HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
"$repo/.venv-xla/bin/python" - "$repo" <<'PY'
import sys
from pathlib import Path

sys.path.insert(0, f"{sys.argv[1]}/tests")
import torch
import yaml
from conftest import WORDS, make_rows, write_jsonl
from transformers import BertConfig, BertModel, BertTokenizerFast

vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)), *"abcdefghijklmnopqrstuvwxyz"]
BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True, model_max_length=64).save_pretrained("tiny")
torch.manual_seed(0)
BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=64)).save_pretrained("tiny")
write_jsonl(Path("train.jsonl"), make_rows(96, seed=1))
write_jsonl(Path("validation.jsonl"), make_rows(40, seed=2))
Path("xla.yaml").write_text(yaml.safe_dump({
    "model": {"name_or_path": "tiny", "labels": ["no", "yes"]},
    "data": {"files": {"train": "train.jsonl", "validation": "validation.jsonl"}, "max_length": 48},
    "train": {"output_dir": "run", "max_steps": 12, "batch_size": 8, "learning_rate": 2e-3, "log_every": 4,
              "mixed_precision": "no", "checkpoint_every": None},
    "eval": {"metric": "mrpc"}}))
PY
"$repo/.venv-xla/bin/python" -m ftcli train -c xla.yaml
"$repo/.venv-xla/bin/python" -m ftcli eval -c xla.yaml --json
echo "XLA (PJRT CPU) smoke test passed"
