"""Precision, padding and launch decisions made before the Accelerator exists."""

from __future__ import annotations

import pytest

from conftest import config_dict
from ftcli import distributed
from ftcli.config import config_from_dict
from ftcli.errors import FtcliError


def cfg_with(tmp_path, *overrides):
    return config_from_dict(config_dict("m", {"train": tmp_path / "t.jsonl"}, tmp_path), list(overrides))


@pytest.mark.parametrize("setting, on_cuda, cpu_bf16, expected", [
    ("auto", False, True, "bf16"),   # CPU with AVX512_BF16/AMX: measured ~2x faster
    ("auto", False, False, "no"),
    ("auto", True, False, "no"),     # CUDA at batch 8: fp32 + TF32 measured faster than bf16 autocast
    ("bf16", True, False, "bf16"),
    ("no", False, True, "no"),
])
def test_precision(tmp_path, monkeypatch, setting, on_cuda, cpu_bf16, expected):
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(distributed, "cpu_supports_bf16", lambda: cpu_bf16)
    cfg = cfg_with(tmp_path, f"train.mixed_precision={setting}")
    assert distributed.resolve_precision(cfg, on_cuda=on_cuda, on_cpu=not on_cuda) == expected


def test_launch_flag_wins_and_fp16_needs_cuda(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert distributed.resolve_precision(cfg_with(tmp_path, "train.mixed_precision=no"), False, True) is None
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # launch's default: the config decides
    with pytest.raises(FtcliError, match="fp16 needs a CUDA GPU"):
        distributed.resolve_precision(cfg_with(tmp_path, "train.mixed_precision=fp16"), False, True)


def test_yaml_no_means_no_precision(tmp_path):
    assert cfg_with(tmp_path, "train.mixed_precision=no").train.mixed_precision == "no"


def test_launched_by_accelerate_detection(monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("ACCELERATE_")]:
        monkeypatch.delenv(key)
    assert not distributed.launched_by_accelerate() and distributed.is_main_process()
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert distributed.launched_by_accelerate()
