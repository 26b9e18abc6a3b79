"""A new user's first hour on their own CSV (issue 20): blank multi-label cells, `init`'s choices,
thresholds, error analysis, the dry run, the CI gate, the pictures and the small things they
tripped on. Tiny models; only the CI gate trains, for a few steps."""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import REPO, config_dict, run_here
from ftcli.cli import app

runner = CliRunner()
TAGS = ["mobile", "refund", "urgent", "vip"]


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_tickets(path: Path, n: int = 120, seed: int = 0) -> Path:
    """Support tickets as people write them: a queue (4 imbalanced classes) and a tags column,
    "urgent,vip" or a blank cell when a ticket has none."""
    rng = random.Random(seed)
    queues = ["billing"] * 5 + ["account_security"] * 3 + ["bug_report"] * 2 + ["feature_request"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ticket_id", "body", "queue", "tags"])
        for i in range(n):
            tags = [t for t, p in zip(TAGS, (0.1, 0.12, 0.25, 0.15)) if rng.random() < p]
            if i < 4:
                tags = [TAGS[i]]  # every tag occurs
            words = " ".join(rng.choice(["good", "bad", "invoice", "crash", "login", "please", "help"])
                             for _ in range(rng.randint(4, 12)))
            writer.writerow([f"T{i:04d}", words, rng.choice(queues), ",".join(tags)])
    return path


@pytest.fixture
def tickets(tmp_path):
    return write_tickets(tmp_path / "tickets.csv")


def blank_rows(path: Path) -> int:
    return sum(1 for r in csv.DictReader(open(path)) if not r["tags"])


def test_init_drafts_blank_tag_cells_that_prepare_loads(tiny_model, tickets, tmp_path):
    drafted = invoke("init", "--data", tickets, "--model", tiny_model, "-o", tmp_path / "c.yaml")
    assert drafted.exit_code == 0, drafted.output
    text = (tmp_path / "c.yaml").read_text()
    cfg = yaml.safe_load(text)
    assert cfg["data"]["label_column"] == "tags" and cfg["data"]["label_separator"] == ","
    assert cfg["data"]["allow_empty_labels"] is True
    assert cfg["train"]["class_weights"] == "auto"  # sparse tags: the median one is on ~15% of rows
    assert f"{blank_rows(tickets)} of 120 rows have no label" in text
    # the other candidate is named by what it is, not by its distinct values
    assert "other candidates: queue (4 values)" in text
    cfg["data"]["cache_dir"] = str(tmp_path / "cache")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    prepared = run_here("prepare", "-c", str(tmp_path / "c.yaml"), "--json")
    assert prepared.returncode == 0, prepared.stderr
    splits = json.loads(prepared.stdout)["splits"]
    assert sum(s["no_label"] for s in splits.values()) == blank_rows(tickets)
    human = run_here("prepare", "-c", str(tmp_path / "c.yaml"))
    assert "with no label" in human.stdout and "cache hit" in human.stdout


def test_init_takes_the_columns_the_user_names(tiny_model, tickets, tmp_path):
    single = invoke("init", "-d", tickets, "--model", tiny_model, "-o", tmp_path / "q.yaml", "--label-column", "queue",
                    "--text-column", "body", "--json")
    assert single.exit_code == 0, single.output
    result = json.loads(single.stdout)
    assert result["label_column"] == "queue" and not result["multi_label"] and result["text_columns"] == ["body"]
    text = (tmp_path / "q.yaml").read_text()
    assert "other candidates: tags (multi-label: 4 labels split on ',')" in text
    forced = invoke("init", "-d", tickets, "--model", tiny_model, "-o", tmp_path / "m.yaml", "--label-column", "queue",
                    "--multi-label", "--json")
    assert forced.exit_code == 0 and json.loads(forced.stdout)["multi_label"]
    assert yaml.safe_load((tmp_path / "m.yaml").read_text())["model"]["problem_type"] == "multi_label"
    for args, expected in ((["--label-column", "tag"], "init --label-column 'tag': no such column (columns: "
                                                       "ticket_id, body, queue, tags)"),
                           (["--text-column", "text"], "init --text-column 'text': no such column"),
                           (["--label-column", "queue", "--text-column", "queue"], "is also the label column")):
        bad = invoke("init", "-d", tickets, "--model", tiny_model, "-o", tmp_path / "x.yaml", *args)
        assert bad.exit_code == 2 and expected in bad.stderr, bad.output
        assert not (tmp_path / "x.yaml").exists()


@pytest.fixture(scope="session")
def tag_classifier(tiny_model, tmp_path_factory) -> Path:
    """An untrained multi-label classifier over TAGS whose probabilities stay near 0.5 +- a bit."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = tmp_path_factory.mktemp("tag-classifier")
    torch.manual_seed(3)
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model, num_labels=4, problem_type="multi_label_classification",
        id2label=dict(enumerate(TAGS)), label2id={t: i for i, t in enumerate(TAGS)})
    with torch.no_grad():
        model.classifier.bias.fill_(-2.0)  # what sparse labels teach first: every probability ~0.1
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(folder)
    return folder


def tags_config(tiny_model, tickets, tmp_path) -> Path:
    cfg = config_dict(tiny_model, {"train": tickets}, tmp_path)
    cfg["model"].update(labels=TAGS, problem_type="multi_label")
    cfg["data"].update(text_columns=["body"], label_column="tags", label_separator=",", allow_empty_labels=True,
                       validation_split=0.25)
    cfg["eval"] = {"metric": "auto"}
    path = tmp_path / "tags.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_predicting_no_label_warns_and_the_best_threshold_is_kept(tiny_model, tickets, tag_classifier, tmp_path):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(tag_classifier, model)
    cfg = tags_config(tiny_model, tickets, tmp_path)
    first = invoke("eval", "-c", cfg, "--model", model, "--json")
    assert first.exit_code == 0, first.output
    assert "warning: validation: the model predicted 0 label(s) where the rows carry" in first.stderr
    assert "--best-threshold --save-threshold" in first.stderr
    assert json.loads(first.stdout)["f1_micro"] == 0
    saved = invoke("eval", "-c", cfg, "--model", model, "--save-threshold", "--json")
    best = json.loads(saved.stdout)["best_threshold"]
    assert best["threshold"] < 0.5 and best["f1_micro"] > 0 and best["saved"] == str(model / "thresholds.json")
    assert json.loads((model / "thresholds.json").read_text())["threshold"] == best["threshold"]
    again = json.loads(invoke("eval", "-c", cfg, "--model", model, "--json").stdout)
    assert again["threshold"] == best["threshold"] and again["f1_micro"] == pytest.approx(best["f1_micro"], abs=1e-6)
    assert again["threshold_source"].startswith("saved with the model")
    told = json.loads(invoke("eval", "-c", cfg, "--model", model, "--set", "eval.threshold=0.5", "--json").stdout)
    assert told["threshold"] == 0.5 and told["threshold_source"] == "eval.threshold"
    # predict uses the kept threshold too, and joins a CSV row's labels with the data's separator
    rows = tickets
    predicted = invoke("predict", "-c", cfg, "--model", model, "-i", rows, "-o", tmp_path / "p.csv", "--json")
    assert json.loads(predicted.stdout)["threshold"] == best["threshold"]
    cells = list(csv.DictReader(open(tmp_path / "p.csv")))
    assert list(cells[0]) == ["row", "labels", *(f"p_{t}" for t in TAGS), "truncated"]
    expected = [",".join(t for t in TAGS if float(c[f"p_{t}"]) >= best["threshold"]) for c in cells]
    assert [c["labels"] for c in cells] == expected and any(expected)
    piped = invoke("predict", "-c", cfg, "--model", model, "-i", rows, "-o", tmp_path / "q.csv",
                   "--label-separator", "|")
    assert [c["labels"] for c in csv.DictReader(open(tmp_path / "q.csv"))] == [e.replace(",", "|") for e in expected]
    assert piped.exit_code == 0


def test_eval_errors_lists_the_misclassified_rows(make_config, tiny_classifier, task_files, tmp_path):
    from io import StringIO

    from ftcli import evaluate
    from ftcli.console import Reporter

    out, err = StringIO(), StringIO()
    result = evaluate(make_config(), model_dir=tiny_classifier, errors_file=tmp_path / "errors.jsonl",
                      reporter=Reporter(mode="plain", out=out, err=err))
    # the Python API prints the result table as the command does
    assert f"validation - {tiny_classifier}" in out.getvalue() and "accuracy" in out.getvalue()
    assert "precision" in out.getvalue()  # the per-class table
    rows = [json.loads(line) for line in (tmp_path / "errors.jsonl").read_text().splitlines()]
    matrix = json.loads(Path(result["report"]).read_text())["confusion_matrix"]
    assert len(rows) == matrix[0][1] + matrix[1][0] == result["errors"]["rows"] > 0
    source = [json.loads(line) for line in task_files["validation"].read_text().splitlines()]
    for r in rows:
        assert r["true"] != r["predicted"] and r["true"] == ["no", "yes"][source[r["row"]]["label"]]
        assert r["sentence1"] == source[r["row"]]["sentence1"] and r["sentence2"] == source[r["row"]]["sentence2"]
        assert r["probability"] >= 0.5 > r["true_probability"]
    assert [r["probability"] for r in rows] == sorted((r["probability"] for r in rows), reverse=True)
    as_csv = invoke("eval", "-c", make_config(), "--model", tiny_classifier, "--errors", tmp_path / "errors.csv")
    assert as_csv.exit_code == 0 and f"misclassified rows -> {tmp_path / 'errors.csv'}" in as_csv.stderr
    table = list(csv.DictReader(open(tmp_path / "errors.csv")))
    assert [int(r["row"]) for r in table] == [r["row"] for r in rows]
    assert list(table[0]) == ["row", "sentence1", "sentence2", "true", "predicted", "probability", "true_probability"]
    bad = invoke("eval", "-c", make_config(), "--model", tiny_classifier, "--errors", tmp_path / "errors.txt")
    assert bad.exit_code == 2 and "--errors" in bad.stderr and "write .jsonl or .csv" in bad.stderr


def test_errors_of_a_held_out_split_are_that_split_s_rows(tiny_model, tickets, tag_classifier, tmp_path):
    cfg = tags_config(tiny_model, tickets, tmp_path)
    result = invoke("eval", "-c", cfg, "--model", tag_classifier, "--errors", tmp_path / "e.jsonl", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "e.jsonl").read_text().splitlines()]
    source = list(csv.DictReader(open(tickets)))
    assert rows and len(rows) == sum(1 for r in rows if r["true"])  # no tag predicted: only tagged rows are wrong
    for r in rows:
        assert r["body"] == source[r["row"]]["body"] and r["true"] == source[r["row"]]["tags"].split(",")
        assert r["missed"] == r["true"] and r["predicted"] == [] and r["extra"] == []


def test_validate_checks_everything_but_tokenizes_nothing(tiny_model, tickets, tmp_path):
    cfg = tags_config(tiny_model, tickets, tmp_path)
    ok = invoke("validate", "-c", cfg, "--require", "f1_micro>=0.5")
    assert ok.exit_code == 0, ok.output
    assert "ok, nothing tokenized or trained" in ok.stdout and "with no label" in ok.stdout
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()
    typo = invoke("validate", "-c", cfg, "--require", "f1>=0.5", "--json")
    assert typo.exit_code == 2 and "--require f1>=0.5: no metric 'f1' (available: loss" in typo.stderr
    assert json.loads(typo.stdout) == {"error": typo.stderr.strip().removeprefix("error: "), "exit_code": 2}
    check = invoke("prepare", "-c", cfg, "--check", "--set", "data.allow_empty_labels=false")
    assert check.exit_code == 2 and "rows have no labels" in check.stderr
    assert not (tmp_path / "cache").exists()


def test_json_commands_answer_with_an_error_object_and_debug_keeps_exit_2(make_config, tmp_path):
    missing = tmp_path / "no-model"
    result = invoke("eval", "-c", make_config(), "--model", missing, "--json")
    assert result.exit_code == 2
    answer = json.loads(result.stdout)
    assert answer["exit_code"] == 2 and str(missing) in answer["error"]
    debug = invoke("--debug", "eval", "-c", make_config(), "--model", missing)
    assert debug.exit_code == 2 and "Traceback" in debug.stderr and "error: " in debug.stderr


def test_result_tables_print_four_decimals():
    from io import StringIO

    from ftcli.console import Reporter

    out = StringIO()
    Reporter(mode="plain", out=out).results("validation", {"accuracy": 1.0, "f1": 0.5, "loss": 3e-06, "samples": 40})
    assert out.getvalue().split() == ["validation", "accuracy", "1.0000", "f1", "0.5000", "loss", "3.00e-06",
                                      "samples", "40"]


def test_a_script_beside_a_checkout_named_ftcli_is_told_why_the_import_fails(tmp_path):
    checkout = tmp_path / "ftcli"
    (checkout / "ftcli").mkdir(parents=True)
    (checkout / "__init__.py").write_text((REPO / "__init__.py").read_text())
    (tmp_path / "script.py").write_text("from ftcli import load_config\n")
    result = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == (
        f"ImportError: {checkout} is a checkout of the ftcli repository, not the ftcli package: Python found it "
        "because it was started in the folder above it; run from another folder, or rename the checkout "
        "(git clone <url> ftcli-src)")


def test_confusion_matrix_shows_counts_and_readable_names(tmp_path):
    from ftcli.plot import plot_confusion_matrix

    names = [f"class_{i:02d}_with_a_long_descriptive_name" for i in range(30)]
    matrix = (np.eye(30, dtype=int) * 40 + 1).tolist()
    small = plot_confusion_matrix([[120, 3], [1, 2]], ["account_security", "billing"], tmp_path / "a.png", "t")
    large = plot_confusion_matrix(matrix, names, tmp_path / "b.png", "t")
    from PIL import Image

    assert Image.open(small).size[0] < Image.open(large).size[0] <= 2000  # grows with the labels, within reason


@pytest.mark.slow
def test_ci_gate_checks_names_first_trains_its_own_folder_and_shows_what_it_gated(make_config, tmp_path):
    cfg = make_config()
    own = Path(yaml.safe_load(cfg.read_text())["train"]["output_dir"])
    script = str(REPO / "scripts" / "ci_quality_gate.sh")
    typo = subprocess.run(["bash", script, str(cfg), "f1_macr>=0.5"], capture_output=True, text=True, cwd=tmp_path)
    assert typo.returncode == 2 and "no metric 'f1_macr'" in typo.stderr, typo.stderr
    assert "train" not in typo.stderr and not (tmp_path / "ci-results" / "eval.json").exists()
    # one training: a requirement that holds and one that is missed, both shown with their bounds
    gated = subprocess.run(["bash", script, str(cfg), "--set", "train.max_steps=3", "loss<100", "accuracy>=1.01"],
                           capture_output=True, text=True, cwd=tmp_path)
    assert gated.returncode == 3, gated.stderr[-3000:]
    last = gated.stdout.splitlines()[-1]
    assert last.startswith("FAILED: validation loss=") and "(< 100)" in last and "accuracy=" in last, last
    run = tmp_path / "ci-results" / "run"
    assert json.loads((tmp_path / "ci-results" / "train.json").read_text())["steps"] == 3
    assert (run / "model").is_dir() and not own.exists()  # the config's own output_dir is left alone
    assert "quality gate failed: accuracy" in gated.stderr and "(met: loss" in gated.stderr
    assert [g["passed"] for g in json.loads((tmp_path / "ci-results" / "eval.json").read_text())["gate"]] == [True, False]
    assert "(>= 1.01: missed)" in last


def test_max_steps_is_described_as_what_decides_the_length():
    from ftcli.config import TrainConfig
    from ftcli.training.plan import make_plan

    capped = make_plan(TrainConfig(max_steps=100, epochs=3), micro_batches_per_epoch=459, processes=1)
    assert capped.describe() == "100 optimizer steps (train.max_steps; 0.218 epochs of 459 steps)"
    assert capped.epoch_label(0) == "epoch 1 of 0.218 (max_steps 100)"
    full = make_plan(TrainConfig(epochs=3), micro_batches_per_epoch=459, processes=1)
    assert full.describe() == "459 per epoch x 3 epoch(s) = 1377 optimizer steps" and full.epoch_label(1) == "epoch 2/3"
