"""For people and scripts: predict, plot, plain output when piped, trackers, the quality gate."""

from __future__ import annotations

import csv
import json

import pytest
from typer.testing import CliRunner

from conftest import REPO, accelerate_launch, make_rows, run_cli, run_here, write_jsonl
from ftcli.cli import app

runner = CliRunner()
MRPC_TEST = REPO / "data" / "mrpc" / "test.jsonl"


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_predict_writes_every_row_in_input_order(make_config, tiny_classifier, tmp_path):
    cfg = make_config()
    rows = make_rows(9, seed=21)
    for r in rows:
        r.pop("label")  # a prediction input needs no label column
    source = write_jsonl(tmp_path / "new.jsonl", rows)
    out = tmp_path / "pred.jsonl"
    result = invoke("predict", "-c", cfg, "--model", tiny_classifier, "--input", source, "--output", out, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["rows"] == 9 and sum(summary["labels"].values()) == 9
    preds = [json.loads(x) for x in out.read_text().splitlines()]
    assert [p["row"] for p in preds] == list(range(9))
    for p in preds:
        assert p["label"] in ("no", "yes") and p["label_id"] == ["no", "yes"].index(p["label"])
        assert sum(p["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
        assert max(p["probabilities"], key=p["probabilities"].get) == p["label"]
    # The same predictions as the model itself, row by row (order is the input's, not the sorted batches').
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_classifier)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier).eval()
    for r, p in zip(rows, preds):
        with torch.no_grad():
            logits = model(**tok(r["sentence1"], r["sentence2"], truncation=True, max_length=48,
                                 return_tensors="pt")).logits
        assert torch.softmax(logits, -1)[0, 1].item() == pytest.approx(p["probabilities"]["yes"], abs=1e-4)

    as_csv = tmp_path / "pred.csv"
    assert invoke("predict", "-c", cfg, "--model", tiny_classifier, "--input", source, "-o", as_csv).exit_code == 0
    table = list(csv.DictReader(as_csv.open()))
    assert [int(r["row"]) for r in table] == list(range(9)) and set(table[0]) == {"row", "label", "label_id", "p_no", "p_yes", "truncated"}


def test_predict_keeps_chosen_input_columns(make_config, tiny_classifier, tmp_path):
    """GLUE submissions need the id column; people reading predictions want the text beside them."""
    cfg = make_config()
    rows = make_rows(5, seed=22)
    source = write_jsonl(tmp_path / "new.jsonl", rows)
    for out in (tmp_path / "kept.jsonl", tmp_path / "kept.csv"):
        result = invoke("predict", "-c", cfg, "--model", tiny_classifier, "--input", source, "-o", out,
                        "--keep", "idx", "--keep", "sentence1")
        assert result.exit_code == 0, result.output
    preds = [json.loads(x) for x in (tmp_path / "kept.jsonl").read_text().splitlines()]
    assert [(p["idx"], p["sentence1"]) for p in preds] == [(r["idx"], r["sentence1"]) for r in rows]
    assert list(preds[0])[:4] == ["row", "idx", "sentence1", "label"]
    table = list(csv.DictReader((tmp_path / "kept.csv").open()))
    assert list(table[0])[:5] == ["row", "idx", "sentence1", "label", "label_id"]
    assert [(int(t["idx"]), t["sentence1"]) for t in table] == [(r["idx"], r["sentence1"]) for r in rows]
    unknown = invoke("predict", "-c", cfg, "--model", tiny_classifier, "--input", source, "--keep", "index")
    assert unknown.exit_code == 2
    assert unknown.stderr.strip() == (f"error: --keep index: no such column in {source} "
                                      "(columns: sentence1, sentence2, label, idx)")


@pytest.mark.slow
@pytest.mark.multiprocess
def test_predict_mrpc_test_same_with_one_or_two_processes(make_config, tiny_classifier, tmp_path):
    cfg = make_config()
    args = ("predict", "-c", str(cfg), "--model", str(tiny_classifier), "--input", str(MRPC_TEST), "--json")
    one = run_here(*args, "--output", str(tmp_path / "one.jsonl"))
    two = accelerate_launch(*args, "--output", str(tmp_path / "two.jsonl"))
    assert one.returncode == 0, one.stderr
    assert two.returncode == 0, two.stderr[-3000:]
    assert json.loads(two.stdout)["processes"] == 2
    a = [json.loads(x) for x in (tmp_path / "one.jsonl").read_text().splitlines()]
    b = [json.loads(x) for x in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert len(a) == len(b) == 1725 and [p["row"] for p in b] == list(range(1725))
    assert [p["label"] for p in a] == [p["label"] for p in b]
    for x, y in zip(a, b):
        assert x["probabilities"]["yes"] == pytest.approx(y["probabilities"]["yes"], abs=1e-5)


def test_predict_bad_input(make_config, tiny_classifier, tmp_path):
    cfg = make_config()
    missing = invoke("predict", "-c", cfg, "--model", tiny_classifier, "--input", tmp_path / "nope.csv")
    assert missing.exit_code == 2 and "--input: file" in missing.stderr
    no_text = write_jsonl(tmp_path / "x.jsonl", [{"text": "a"}])
    wrong = invoke("predict", "-c", cfg, "--model", tiny_classifier, "--input", no_text)
    assert wrong.exit_code == 2 and "column 'sentence1' not found" in wrong.stderr
    bad_out = invoke("predict", "-c", cfg, "--model", tiny_classifier, "--input", MRPC_TEST, "-o", tmp_path / "p.txt")
    assert bad_out.exit_code == 2 and "write .jsonl or .csv" in bad_out.stderr


@pytest.mark.parametrize("output", ["same", "symlink", "hardlink", "parent-is-a-file", "a-folder"])
def test_predict_refuses_an_output_that_would_destroy_the_input_before_any_work(
        make_config, tiny_classifier, tmp_path, monkeypatch, output):
    import os

    cfg = make_config()
    source = write_jsonl(tmp_path / "rows.jsonl", make_rows(5, seed=4, labelled=False))
    before = source.read_bytes()
    target = {"same": source, "symlink": tmp_path / "link.jsonl", "hardlink": tmp_path / "hard.jsonl",
              "parent-is-a-file": source / "out.jsonl", "a-folder": tmp_path / "dir.jsonl"}[output]
    if output == "symlink":
        target.symlink_to(source)
    elif output == "hardlink":
        os.link(source, target)
    elif output == "a-folder":
        target.mkdir()
    import ftcli.data

    monkeypatch.setattr(ftcli.data, "prepare", lambda *a, **k: pytest.fail("work started before the check"))
    result = invoke("predict", "-c", cfg, "--model", tiny_classifier, "--input", source, "--output", target)
    assert result.exit_code == 2, result.output
    expected = {"parent-is-a-file": "is a file, not a folder", "a-folder": "is a folder; give a file name inside it"}
    assert expected.get(output, "is the input file") in result.stderr, result.stderr
    assert len(result.stderr.splitlines()) == 1 and source.read_bytes() == before


def test_plot_redraws_from_a_run_in_progress(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps({"type": "train", "step": s, "loss": 0.7 - s / 100, "lr": 1e-4}) for s in range(1, 30)]
    lines.append(json.dumps({"type": "eval", "step": 29, "epoch": 1, "split": "validation", "loss": 0.5,
                             "accuracy": 0.8, "f1": 0.85, "samples": 40, "seconds": 0.1}))
    lines.append('{"type": "train", "st')  # the line being written right now
    (run / "metrics.jsonl").write_text("\n".join(lines))
    result = invoke("plot", run)
    assert result.exit_code == 0, result.output
    png = run / "learning_curves.png"
    assert result.stdout.strip() == str(png) and png.read_bytes()[:4] == b"\x89PNG"
    empty = invoke("plot", tmp_path)
    assert empty.exit_code == 2 and "no metrics.jsonl here" in empty.stderr


def test_piped_output_is_plain_lines(make_config):
    result = run_cli("train", "-c", str(make_config(epochs=2)))
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stderr + result.stdout and "\r" not in result.stderr
    progress = [line for line in result.stderr.splitlines() if line.startswith("epoch ")]
    assert progress and all("loss" in line and "lr" in line and "eta" in line for line in progress)
    assert "steps" in result.stderr and "global" in result.stderr  # the start-up summary
    assert "validation" in result.stdout and "accuracy" in result.stdout  # the results table


def test_quiet_prints_results_only(make_config):
    result = run_here("train", "-c", str(make_config(epochs=1)), "--quiet")
    assert result.returncode == 0
    assert result.stderr.strip() == "" and "accuracy" in result.stdout


def test_rich_display_renders(make_config, tmp_path):
    """The live display (used when stdout and stderr are terminals) runs the whole training."""
    import io

    from ftcli.config import load_config
    from ftcli.console import Reporter
    from ftcli.training import train

    err, out = io.StringIO(), io.StringIO()
    reporter = Reporter(mode="rich", err=err, out=out)
    train(load_config(make_config(epochs=1)), reporter=reporter)
    text = err.getvalue()
    assert "ftcli train" in text and "epoch 1/1" in text and "12/12" in text


@pytest.mark.slow
def test_tensorboard_tracker_logs_events(make_config, tmp_path):
    result = run_here("train", "-c", str(make_config(epochs=1, report_to=["tensorboard"])))
    assert result.returncode == 0, result.stderr
    events = list((tmp_path / "run" / "tracking").rglob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    assert {"train/loss", "eval/accuracy"} <= set(acc.Tags()["scalars"])


@pytest.mark.parametrize("tracker, expected", [
    ("wandb", "tracker 'wandb' is not installed; pip install wandb"),
    ("bogus", "unknown tracker 'bogus'"),
])
def test_missing_or_unknown_tracker_is_bad_input(make_config, tmp_path, tracker, expected):
    result = invoke("train", "-c", make_config(report_to=[tracker]))
    assert result.exit_code == 2 and expected in result.stderr
    assert not (tmp_path / "run").exists()


def test_require_syntax_is_checked(make_config, tiny_classifier):
    result = invoke("eval", "-c", make_config(), "--model", tiny_classifier, "--require", "f1 ~ 0.5")
    assert result.exit_code == 2 and "write METRIC OP VALUE" in result.stderr
