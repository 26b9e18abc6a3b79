"""Real multi-process runs: 2 CPU processes under `accelerate launch` (gloo)."""

from __future__ import annotations

import json

import pytest

from conftest import accelerate_launch, run_cli

pytestmark = [pytest.mark.slow, pytest.mark.multiprocess]


def test_two_process_training_then_one_process_eval_agree(make_config, tmp_path):
    cfg = make_config()
    launched = accelerate_launch("train", "-c", str(cfg), "--json")
    assert launched.returncode == 0, launched.stderr[-3000:]
    result = json.loads(launched.stdout)  # one JSON object: only the main process prints
    assert result["processes"] == 2
    assert result["global_batch"] == 16
    # 96 rows / 16 per step = 6 steps x 8 epochs, as planned; the schedule ends at zero.
    assert result["steps"] == result["planned_steps"] == 48
    assert result["final_lr"] == 0.0
    assert "8 per process x 2 process(es) x 1 accumulation = 16 global" in launched.stderr
    assert launched.stderr.count("ftcli train") == 1  # the summary came from one process only
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in records if r["type"] == "eval"]) == 8  # one writer: no duplicated lines

    single = run_cli("eval", "-c", str(cfg), "--json")
    assert single.returncode == 0, single.stderr
    single = json.loads(single.stdout)
    assert single["processes"] == 1 and single["samples"] == result["eval"]["samples"] == 40
    assert single["accuracy"] == result["eval"]["accuracy"]
    assert single["f1"] == result["eval"]["f1"]
    assert single["loss"] == pytest.approx(result["eval"]["loss"], rel=1e-6)
