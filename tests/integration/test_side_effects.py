"""`from ftcli import train` in a notebook leaves the process as it found it: torch settings,
matplotlib's backend, datasets' and transformers' logging and progress bars, the root logger
(ONNX Runtime's quantizer logs through it) and stdout (torch's exporter prints), signal handlers,
Accelerate's state (a caller's own Accelerator keeps working), the global random generators (training seeds them), and glibc's malloc
(heap reuse is the `ftcli train` command's alone)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import make_rows, write_jsonl

pytestmark = pytest.mark.slow

SCRIPT = r'''
import hashlib, json, logging, random, signal, sys
import numpy as np
import matplotlib
matplotlib.use("svg")  # stands in for a notebook's inline backend
import datasets, torch
from datasets.utils import logging as ds_logging
from transformers.utils import logging as tf_logging
from accelerate.state import AcceleratorState, PartialState

import ftcli.runtime
heap = []
ftcli.runtime.reuse_heap_memory = lambda: heap.append(1) or True

def snapshot():
    return {
        "threads": torch.get_num_threads(), "grad": torch.is_grad_enabled(),
        "dtype": str(torch.get_default_dtype()), "backend": matplotlib.get_backend(),
        "datasets": [ds_logging.get_verbosity(), datasets.is_progress_bar_enabled()],
        "transformers": [tf_logging.get_verbosity(), tf_logging.is_progress_bar_enabled()],
        "signals": [repr(signal.getsignal(signal.SIGINT)), repr(signal.getsignal(signal.SIGTERM))],
        "logging": [len(logging.getLogger().handlers), logging.getLogger().level,
                    logging.getLogger("torch.onnx").level, id(sys.stdout)],
        "accelerate": [sorted(PartialState._shared_state), sorted(AcceleratorState._shared_state),
                       mine.gradient_accumulation_steps, mine.mixed_precision, str(mine.device)],
        "rng": [hashlib.sha256(repr(random.getstate()).encode()).hexdigest(),
                hashlib.sha256(np.random.get_state()[1].tobytes()).hexdigest(),
                hashlib.sha256(torch.get_rng_state().numpy().tobytes()).hexdigest()],
    }

from accelerate import Accelerator
mine = Accelerator(cpu=True, mixed_precision="bf16", gradient_accumulation_steps=3)  # the caller's own
ds_logging.set_verbosity_info()
random.seed(123); np.random.seed(123); torch.manual_seed(123)  # the caller's own streams: they must survive
before = snapshot()
from ftcli import evaluate, load_config, predict, train
from ftcli.console import Reporter
from ftcli.deploy import calibrate, export

cfg = load_config(sys.argv[1])
train(cfg, reporter=Reporter(mode="quiet"))
predict(cfg, sys.argv[2], sys.argv[3], reporter=Reporter(mode="quiet"))
evaluate(cfg, reporter=Reporter(mode="quiet"))
calibrate(cfg, reporter=Reporter(mode="quiet"))
export(cfg.train.output_dir, quantize="int8", reporter=Reporter(mode="quiet"))  # ORT's quantizer logs to root
predict(cfg, sys.argv[2], sys.argv[3], reporter=Reporter(mode="quiet"), backend="onnx", model_dir=cfg.train.output_dir + "/onnx-int8")
after = snapshot()
layer = mine.prepare(torch.nn.Linear(2, 2))  # the caller's Accelerator still works
with mine.autocast():
    works = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
print(json.dumps({"before": before, "after": after, "heap": len(heap), "callers_accelerator": works}))
'''


def test_train_predict_evaluate_leave_the_process_as_they_found_it(make_config, tmp_path):
    cfg = make_config(epochs=1, data={"cache_dir": str(tmp_path / "fresh-cache")})  # a cache miss builds
    source = write_jsonl(tmp_path / "new.jsonl", make_rows(5, seed=9))
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(cfg), str(source), str(tmp_path / "p.jsonl")],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["after"] == result["before"]
    assert result["callers_accelerator"]  # its bf16 autocast, after ftcli's own fp32 Accelerators came and went
    assert result["heap"] == 0  # glibc's malloc tuning cannot be undone: only `ftcli train` makes it
    assert (tmp_path / "run" / "learning_curves.png").stat().st_size > 10_000  # drawn without pyplot's backend


def test_the_train_command_reuses_the_heap_for_cpu_training(monkeypatch):
    from ftcli import runtime
    from ftcli.config import config_from_dict

    calls = []
    monkeypatch.setattr(runtime, "reuse_heap_memory", lambda: calls.append("reuse"))
    monkeypatch.setattr(runtime, "release_heap_memory", lambda: calls.append("release"))
    def config(model=None, **train):
        return config_from_dict({"model": {"name_or_path": "m", **(model or {})}, "data": {"files": {"train": "t.csv"}},
                                 **({"train": train} if train else {})})

    runtime.tune_process_for_training(config())
    runtime.tune_process_for_training(config(cpu_heap_reuse=False))
    # A run that saves memory returns freed memory to the OS instead of keeping it, unless the
    # config asks for heap reuse itself (a resumed run's saved config says null: the same choice).
    runtime.tune_process_for_training(config({"dtype": "bfloat16", "peft": {}}))
    runtime.tune_process_for_training(config(gradient_checkpointing=True))
    runtime.tune_process_for_training(config(gradient_checkpointing=True, cpu_heap_reuse=True))
    assert calls == ["reuse", "release", "release", "reuse"]
