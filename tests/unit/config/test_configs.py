"""Every config shipped in configs/ validates, opens with the command that runs it, and every
accelerate launch config loads with accelerate's own loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftcli.config import load_config

REPO = Path(__file__).resolve().parents[3]
FTCLI_CONFIGS = sorted((REPO / "configs").glob("*.yaml"))
ACCELERATE_CONFIGS = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))


def test_there_are_configs():
    assert {p.name for p in FTCLI_CONFIGS} >= {"mrpc.yaml", "quickstart.yaml"}
    assert {p.stem for p in ACCELERATE_CONFIGS} == {
        "multi-cpu", "one-gpu", "multi-gpu", "fsdp", "deepspeed-zero2", "tpu"}


@pytest.mark.parametrize("path", FTCLI_CONFIGS, ids=lambda p: p.name)
def test_ftcli_config_validates_and_names_its_command(path):
    cfg = load_config(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and "ftcli" in first and str(path.relative_to(REPO)) in first


def test_mrpc_is_the_course_recipe():
    cfg = load_config(REPO / "configs" / "mrpc.yaml")
    assert cfg.model.name_or_path == "bert-base-uncased"
    assert (cfg.data.path, cfg.data.name) == ("glue", "mrpc")
    t = cfg.train
    assert (t.batch_size, t.learning_rate, t.epochs, t.scheduler, t.warmup_steps) == (8, 5e-5, 3, "linear", 0)
    assert cfg.data.padding == "dynamic" and cfg.data.pad_to_multiple_of is None
    # transformers.AdamW(model.parameters(), lr=5e-5): weight decay 0, fp32, no clipping.
    assert t.weight_decay == 0.0 and t.max_grad_norm is None
    assert (t.mixed_precision, t.tf32) == ("no", False)  # real fp32, also on Ampere+ GPUs
    # ftcli's speed-ups that change the arithmetic are off (fused AdamW, the fast dropout mask).
    assert (t.fused_optimizer, t.fast_dropout, t.group_by_length) == (False, False, False)
    assert "exactly" not in (REPO / "configs" / "mrpc.yaml").read_text().split("model:")[0].replace(
        "What still differs", "")  # no claim of exactness; the file says what differs


def test_quickstart_runs_offline_from_the_repo():
    cfg = load_config(REPO / "configs" / "quickstart.yaml")
    assert cfg.model.name_or_path.startswith("package:")
    for file in cfg.data.files.values():
        assert not Path(file).is_absolute() and (REPO / file).is_file()


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_config_loads(path):
    from accelerate.commands.config.config_args import load_config_from_file

    cfg = load_config_from_file(str(path))
    assert cfg.num_processes >= 1
    first = path.read_text().splitlines()[0]
    assert first.startswith("# accelerate launch --config_file configs/accelerate/" + path.name)
