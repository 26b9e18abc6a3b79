"""Golden losses (torchtune's recipe tests): the real training path on the tiny model, a fixed
seed and 96 rows, compared step by step with recorded values. A refactor or a speed trick that
changes the arithmetic fails here, loudly, even when the model would still learn.

Recorded with the versions in constraints.txt on this project's CI machine type. To re-record
after a deliberate change of the arithmetic: FTCLI_RECORD_GOLDEN=1 pytest tests/integration/test_golden.py,
and say why in the commit.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from conftest import accelerate_launch, config_dict, run_here

pytestmark = pytest.mark.slow

GOLDEN = Path(__file__).parent / "golden" / "tiny_losses.json"
RECORD = os.environ.get("FTCLI_RECORD_GOLDEN") == "1"

# Every default speed feature on (fast dropout, fused AdamW with folded clipping, length grouping,
# padding to 8), clipping active, a warm-up: what users run, on the tiny model.
SETTINGS = {"epochs": 2, "log_every": 1, "checkpoint_every": None, "warmup_ratio": 0.1, "max_grad_norm": 0.5}


def _losses(run: Path) -> list[float]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["type"] == "train"]


def _check(name: str, losses: list[float]) -> None:
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if RECORD:
        golden[name] = losses
        GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
        return
    assert name in golden, f"no golden losses for {name!r}: record them (see this file's docstring)"
    assert len(losses) == len(golden[name])
    assert losses == pytest.approx(golden[name], rel=1e-4), f"{name}: per-step losses moved"


@pytest.fixture
def golden_config(tiny_model, task_files, tmp_path):
    def make(**train) -> Path:
        cfg = config_dict(tiny_model, task_files, tmp_path, **{**SETTINGS, **train})
        path = tmp_path / "golden.yaml"
        path.write_text(yaml.safe_dump(cfg))
        return path

    return make


def test_one_process_matches_the_golden_losses(golden_config, tmp_path):
    result = run_here("train", "-c", str(golden_config()))
    assert result.returncode == 0, result.stderr
    losses = _losses(tmp_path / "run")
    assert len(losses) == 24  # 96 rows / 8 x 2 epochs
    _check("one_process_batch_8", losses)


@pytest.mark.multiprocess
def test_two_processes_match_the_golden_losses(golden_config, tmp_path):
    result = accelerate_launch("train", "-c", str(golden_config(batch_size=4)))
    assert result.returncode == 0, result.stderr[-3000:]
    losses = _losses(tmp_path / "run")
    assert len(losses) == 24
    _check("two_processes_batch_4", losses)
