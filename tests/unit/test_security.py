"""Security rules: safe YAML, no pickle loading, weights as safetensors, remote code opt-in."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ftcli"
SOURCES = {p: p.read_text() for p in PACKAGE.rglob("*.py")}


def test_yaml_only_through_safe_load():
    for path, text in SOURCES.items():
        for call in re.findall(r"yaml\.(\w+)\(", text):
            assert call in ("safe_load", "safe_dump", "compose"), f"{path}: yaml.{call}"


def test_no_unsafe_torch_load():
    for path, text in SOURCES.items():
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in match.group(1), f"{path}: {match.group(0)}"
        assert "pickle.load" not in text, path


def test_trust_remote_code_defaults_to_false():
    from ftcli.config import ModelConfig

    assert ModelConfig(name_or_path="x").trust_remote_code is False


@pytest.mark.slow
def test_checkpoint_files_load_without_pickle(make_config, tmp_path):
    """Everything a checkpoint holds loads with torch.load(weights_only=True) or is safetensors."""
    import torch

    from conftest import run_cli
    from ftcli.training import checkpoint

    cfg = make_config(epochs=1, checkpoint_every=6)
    assert run_cli("train", "-c", str(cfg)).returncode == 0
    ckpt = checkpoint.complete(tmp_path / "run")[-1]
    assert (ckpt / "model.safetensors").is_file() and not list(ckpt.glob("pytorch_model*.bin"))
    for name in ("optimizer.bin", "scheduler.bin"):
        torch.load(ckpt / name, weights_only=True)
    from accelerate.utils import load

    load(ckpt / "random_states_0.pkl")  # accelerate's loader: weights_only=True with numpy allow-listed
    model_files = [p.name for p in (tmp_path / "run" / "model").iterdir()]
    assert "model.safetensors" in model_files and not [n for n in model_files if n.endswith((".bin", ".pt", ".pkl"))]
