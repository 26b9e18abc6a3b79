"""One real prepare -> train -> eval on CPU, through the CLI in fresh processes, as a user runs it."""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import run_cli, run_here

pytestmark = pytest.mark.slow


def test_prepare_train_eval(make_config, tmp_path):
    cfg = make_config(mixed_precision="auto")  # bf16 where the CPU has it: eval must still match exactly

    first = run_cli("prepare", "-c", str(cfg), "--json")
    assert first.returncode == 0, first.stderr
    first = json.loads(first.stdout)
    assert first["cache"] == "built" and first["why"] == "first build"
    assert first["splits"]["train"]["rows"] == 96 and first["splits"]["test"]["labeled"] is False
    again = json.loads(run_here("prepare", "-c", str(cfg), "--json").stdout)
    assert again["cache"] == "hit" and again["path"] == first["path"]

    trained = run_cli("train", "-c", str(cfg), "--json")
    assert trained.returncode == 0, trained.stderr
    result = json.loads(trained.stdout)
    assert "cache hit" in trained.stderr  # train reused what prepare built
    run = tmp_path / "run"

    # The model folder loads with plain transformers, labels included, weights as safetensors.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(run / "model")
    assert model.config.id2label == {0: "no", 1: "yes"}
    assert model.config.label2id == {"no": 0, "yes": 1}
    assert (run / "model" / "model.safetensors").is_file()
    assert not list((run / "model").glob("*.bin"))
    AutoTokenizer.from_pretrained(run / "model")

    # The resolved config, the per-step log and the final metrics are written and agree.
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["batch_size"] == 8 and saved["data"]["max_length"] == 48
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_steps = [r["step"] for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    assert train_steps == list(range(4, 97, 4))  # 96 rows / 8 = 12 steps x 8 epochs, logged every 4
    assert [e["epoch"] for e in evals] == list(range(1, 9))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics == result
    assert metrics["steps"] == metrics["planned_steps"] == 96
    assert metrics["final_lr"] == 0.0
    assert metrics["eval"]["accuracy"] == evals[-1]["accuracy"]
    # The task is learnable: training must beat chance clearly.
    assert metrics["eval"]["accuracy"] >= 0.8, metrics["eval"]
    assert records[0]["loss"] > records[-2]["loss"]

    # Learning curves drawn at the end of training.
    png = run / "learning_curves.png"
    assert png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000

    evaluated = run_cli("eval", "-c", str(cfg), "--json")
    assert evaluated.returncode == 0, evaluated.stderr
    ev = json.loads(evaluated.stdout)
    assert ev["samples"] == 40 and ev["split"] == "validation"
    for k in ("accuracy", "f1", "loss"):  # the same model, batches and kernels: the same numbers
        assert ev[k] == metrics["eval"][k]

    table = run_here("eval", "-c", str(cfg))
    assert table.returncode == 0
    assert "accuracy" in table.stdout and f"{ev['accuracy']:.4g}" in table.stdout
