"""Shared fixtures: a tiny random BERT (config + WordPiece vocab) and a small learnable task.

Everything is built in temporary folders: the suite needs no network and no downloaded model.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# The Hub is unreachable here; say so up front instead of waiting for timeouts.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parent.parent

WORDS = (
    "the a cat dog bird fish runs sits eats sleeps on under near big small red blue green fast slow "
    "house tree car road river happy sad old new good bad today yesterday morning night"
).split()


def make_sentence(rng: random.Random, with_good: bool, first: bool = False) -> str:
    words = [rng.choice([w for w in WORDS if w not in ("good", "bad")]) for _ in range(rng.randint(4, 14))]
    words.insert(0 if first else rng.randrange(len(words) + 1), "good" if with_good else "bad")
    return " ".join(words)


def make_rows(n: int, seed: int, labelled: bool = True) -> list[dict]:
    """Sentence pairs of varied length; the label is 1 when the first sentence opens with "good"
    (a task a 2-layer model learns in a few dozen steps), so training measurably helps."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.randint(0, 1)
        rows.append({
            "sentence1": make_sentence(rng, label == 1, first=True),
            "sentence2": make_sentence(rng, rng.random() < 0.5),
            "label": label if labelled else -1,
            "idx": i,
        })
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def bert_tokenizer(vocab: list[str], folder: Path, lower: bool = True):
    """A fast BERT tokenizer (BertNormalizer, BertPreTokenizer, WordPiece) over `vocab`."""
    from transformers import BertTokenizerFast

    try:  # transformers 5 takes the vocabulary itself (`vocab=`)
        return BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=lower, model_max_length=64)
    except TypeError:  # transformers 4 (scripts/test_min_versions.sh): a vocab file
        (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
        return BertTokenizerFast(vocab_file=str(folder / "vocab.txt"), do_lower_case=lower, model_max_length=64)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT with random weights and a WordPiece vocab covering WORDS."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(WORDS)), *"abcdefghijklmnopqrstuvwxyz"]
    bert_tokenizer(vocab, folder).save_pretrained(folder)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, type_vocab_size=2,
    )
    import torch

    torch.manual_seed(0)
    BertModel(config).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_no_dropout(tiny_model, tmp_path_factory) -> Path:
    """The tiny BERT without dropout: runs on different process counts then see identical math."""
    import shutil

    folder = tmp_path_factory.mktemp("tiny-bert-no-dropout")
    shutil.copytree(tiny_model, folder, dirs_exist_ok=True)
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="session")
def tiny_classifier(tiny_model, tmp_path_factory) -> Path:
    """A saved sequence classifier (labels no/yes) with fixed random weights, for eval tests."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path_factory.mktemp("tiny-classifier")
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model, num_labels=2, id2label={0: "no", 1: "yes"}, label2id={"no": 0, "yes": 1})
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def task_files(tmp_path_factory) -> dict[str, Path]:
    """train 96 rows, validation 40 (uneven for 2 processes x batch 16), test 7 unlabelled."""
    folder = tmp_path_factory.mktemp("task")
    return {
        "train": write_jsonl(folder / "train.jsonl", make_rows(96, seed=1)),
        "validation": write_jsonl(folder / "validation.jsonl", make_rows(40, seed=2)),
        "test": write_jsonl(folder / "test.jsonl", make_rows(7, seed=3, labelled=False)),
    }


def config_dict(model: Path, files: dict[str, Path], workdir: Path, **train) -> dict:
    return {
        "model": {"name_or_path": str(model), "labels": ["no", "yes"]},
        "data": {
            "files": {k: str(v) for k, v in files.items()},
            "text_columns": ["sentence1", "sentence2"],
            "max_length": 48,
            "cache_dir": str(workdir / "cache"),
        },
        "train": {
            "output_dir": str(workdir / "run"),
            "epochs": 8,  # a random-init 2-layer model needs ~60 steps to learn the task
            "batch_size": 8,
            "learning_rate": 2e-3,
            "mixed_precision": "no",
            "log_every": 4,
            **train,
        },
        "eval": {"metric": "mrpc"},
    }


@pytest.fixture
def make_config(tiny_model, task_files, tmp_path):
    """Write a config for the tiny model and task into tmp_path; return its path."""

    def make(name: str = "config.yaml", *, data: dict | None = None, model: dict | None = None, **train) -> Path:
        cfg = config_dict(tiny_model, task_files, tmp_path, **train)
        if data:
            cfg["data"].update(data)
        if model:
            cfg["model"].update(model)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    return make


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """Run `python -m ftcli ...` in a fresh process (as a user would)."""
    return subprocess.run(
        [sys.executable, "-m", "ftcli", *args], capture_output=True, text=True, cwd=cwd,
        env={**os.environ, **(env or {})}, timeout=timeout,
    )


def run_here(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`ftcli ARGS` in this process, through Typer's CliRunner: the same parsing, output streams
    and exit codes as `run_cli`, without starting an interpreter (~12 s of imports on a 2-core
    machine). What only a fresh process shows (signals, kill -9, fault injection, start-up,
    output piped by a shell) needs `run_cli`."""
    from typer.testing import CliRunner

    from ftcli.cli import app

    result = CliRunner().invoke(app, list(args), env=env)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception  # a crash of the test harness, not an exit code to compare
    return subprocess.CompletedProcess(["ftcli", *args], result.exit_code, result.stdout, result.stderr)


def accelerate_launch(*args: str, processes: int = 2, cwd: Path | None = None, timeout: int = 600,
                      env: dict | None = None):
    """`accelerate launch` with N CPU processes (gloo), through configs/accelerate/multi-cpu.yaml:
    Accelerate 1.x runs `--cpu --num_processes N` as a single process."""
    cmd = [
        sys.executable, "-m", "accelerate.commands.launch",
        "--config_file", str(REPO / "configs" / "accelerate" / "multi-cpu.yaml"),
        "--num_processes", str(processes), "--main_process_port", str(_free_port()),
        "-m", "ftcli", *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs mounted at tmp_path/small (root only; skipped where mounting is not allowed),
    for disk-full cases. `fill(free_bytes)` fills it up to leave about that much space free."""
    import shutil

    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and tmpfs mounts to make a small disk")

    def fill(free_bytes: int) -> None:
        free = shutil.disk_usage(mount).free
        with open(mount / "filler", "ab") as f:
            f.write(b"\0" * max(0, free - free_bytes))

    try:
        yield mount, fill
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


SWEEP_SPACE = {"train.learning_rate": {"low": 1e-3, "high": 6e-3, "log": True}, "train.epochs": {"choices": [3, 4]}}


@pytest.fixture(scope="module")
def sweep_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep-data")
    return {"train": write_jsonl(folder / "train.jsonl", make_rows(200, seed=31)),
            "validation": write_jsonl(folder / "validation.jsonl", make_rows(60, seed=32))}


def sweep_config(tiny_model, files, tmp_path, name="sweep.yaml", **sweep) -> Path:
    cfg = config_dict(tiny_model, files, tmp_path, epochs=1, batch_size=16, log_every=5, eval_every=4,
                      checkpoint_every=None)
    cfg["sweep"] = {"space": SWEEP_SPACE, "trials": 4, "sampler": "random", **sweep}
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path
