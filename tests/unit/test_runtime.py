"""Precision, padding and launch decisions made before the Accelerator exists."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest

from conftest import config_dict
from ftcli import runtime
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
    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: cpu_bf16)
    cfg = cfg_with(tmp_path, f"train.mixed_precision={setting}")
    assert runtime.resolve_precision(cfg.train, on_cuda=on_cuda, on_cpu=not on_cuda) == expected


def test_launch_flag_wins_and_fp16_needs_cuda(tmp_path, monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    assert runtime.resolve_precision(cfg_with(tmp_path, "train.mixed_precision=no").train, False, True) is None
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")  # launch's default: the config decides
    with pytest.raises(FtcliError, match="fp16 needs a CUDA GPU"):
        runtime.resolve_precision(cfg_with(tmp_path, "train.mixed_precision=fp16").train, False, True)


def test_yaml_no_means_no_precision(tmp_path):
    assert cfg_with(tmp_path, "train.mixed_precision=no").train.mixed_precision == "no"


def test_launched_by_accelerate_detection(monkeypatch):
    for key in [k for k in __import__("os").environ if k.startswith("ACCELERATE_")]:
        monkeypatch.delenv(key)
    assert not runtime.launched_by_accelerate() and runtime.is_main_process()
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    assert runtime.launched_by_accelerate()


@pytest.mark.parametrize("flag, name", [("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DeepSpeed")])
def test_a_sharded_launch_on_the_cpu_is_refused(tmp_path, monkeypatch, flag, name):
    """Accelerate would quietly turn FSDP/DeepSpeed into plain CPU processes: say so, and stop."""
    monkeypatch.setenv(flag, "true")
    monkeypatch.setattr(runtime, "has_accelerator_device", lambda: False)
    with pytest.raises(FtcliError, match=f"asks for {name}, which shards over GPUs, but this run is on the CPU "
                                         r"\(no GPU here\)"):
        runtime.make_accelerator(cfg_with(tmp_path).train)


@pytest.mark.parametrize("precision, tf32, expected", [
    ("auto", None, True), ("no", None, False), ("bf16", None, False), ("no", True, True), ("auto", False, False)])
def test_tf32_only_where_asked_or_measured(tmp_path, precision, tf32, expected):
    """`mixed_precision: no` is real fp32; `auto` means fp32 + TF32 on CUDA (measured fastest)."""
    overrides = [f"train.mixed_precision={precision}"] + ([f"train.tf32={str(tf32).lower()}"] if tf32 is not None else [])
    train = cfg_with(tmp_path, *overrides).train
    assert runtime.tf32_enabled(train) is expected
    cuda = SimpleNamespace(mixed_precision="no", device=SimpleNamespace(type="cuda"))
    if precision != "bf16":
        assert runtime.precision_label(cuda, train) == ("fp32 + TF32" if expected else "fp32")


def test_tf32_is_set_for_the_run_and_restored(tmp_path, monkeypatch):
    """On CUDA a run sets TF32 as train.tf32 says, and the next run (or the caller) finds the
    process as it was. The Accelerator is faked: the switch is torch's, not the GPU's."""
    fake = SimpleNamespace(device=SimpleNamespace(type="cuda"), is_main_process=True, end_training=lambda: None,
                           wait_for_everyone=lambda: None)
    monkeypatch.setattr(runtime, "make_accelerator", lambda train, **kw: fake)
    before = runtime._tf32()
    runtime._set_tf32(False)
    off = runtime._tf32()
    try:
        with runtime.accelerator_session(cfg_with(tmp_path, "train.mixed_precision=auto").train):
            assert runtime._tf32() != off  # auto: fp32 + TF32
        assert runtime._tf32() == off
        runtime._set_tf32(True)
        on = runtime._tf32()
        with runtime.accelerator_session(cfg_with(tmp_path, "train.mixed_precision=no").train):
            assert runtime._tf32() == off  # real fp32, although the caller had TF32 on
        assert runtime._tf32() == on
    finally:
        runtime._restore_tf32(before)


@pytest.mark.parametrize("policy, passive", [("passive", True), ("spin", False)])
def test_openmp_wait_policy_is_set_for_the_torch_import_only(policy, passive):
    """GNU OpenMP reads OMP_WAIT_POLICY as torch loads it (OMP_DISPLAY_ENV prints what it made of it);
    the variable is gone from the environment afterwards."""
    import subprocess
    import sys

    code = ("import os; from ftcli.runtime import set_openmp_wait; print(set_openmp_wait(%r)); import torch; "
            "print('OMP_WAIT_POLICY' in os.environ)" % policy)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, "OMP_DISPLAY_ENV": "verbose"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(passive), "False"]
    # libgomp names its default policy PASSIVE too: the spin count tells them apart
    assert f"GOMP_SPINCOUNT = '{0 if passive else 300000}'" in done.stderr


def test_auto_openmp_wait_follows_the_load_of_other_processes(monkeypatch):
    from ftcli import runtime
    from ftcli.config import TrainConfig

    monkeypatch.setattr(runtime, "cpu_load_of_others", lambda: 0.9)
    assert runtime.openmp_wait_for(TrainConfig()) == "passive"
    assert runtime.openmp_wait_for(TrainConfig(openmp_wait="spin")) == "spin"
    monkeypatch.setattr(runtime, "cpu_load_of_others", lambda: 0.1)
    assert runtime.openmp_wait_for(TrainConfig()) == "spin"
    assert runtime.openmp_wait_for(TrainConfig(openmp_wait="passive")) == "passive"


def test_the_load_of_other_processes_is_measured():
    """A busy loop in another process counts as about one core; this process's own work does not."""
    import subprocess
    import sys
    import time

    from ftcli.runtime import cpu_load_of_others

    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)
        busy = cpu_load_of_others(0.5)
    finally:
        hog.kill()
        hog.wait()
    assert 0.5 < busy <= 2.05, busy  # the hog (another test worker may add up to a core)
