"""Bad input, table-driven: every case exits 2 with one `error: ...` line per problem that names
the file, field or row; no traceback; nothing half-written (no output_dir, no cache folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from conftest import make_rows, write_jsonl
from ftcli.cli import app

runner = CliRunner()


def _rows_file(tmp_path: Path, name: str, rows: list[dict]) -> str:
    return str(write_jsonl(tmp_path / name, rows))


def _mutate(cfg: dict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    for p in parents:
        cfg = cfg.setdefault(p, {})
    if value is _DELETE:
        cfg.pop(leaf, None)
    else:
        cfg[leaf] = value


_DELETE = object()

# (id, how to break the setup, command, text the message must contain)
CASES = [
    ("config-missing", {"config_path": "nope.yaml"}, ["train"], "nope.yaml: config file not found"),
    ("yaml-syntax", {"config_text": "model: {name_or_path: [x\n"}, ["train"], "invalid YAML"),
    ("unknown-key", {"set": {"train.learnig_rate": 1}}, ["train"], "train.learnig_rate: unknown key (did you mean 'learning_rate'?)"),
    ("wrong-type", {"set": {"train.batch_size": "eight"}}, ["train"], "train.batch_size: Input should be a valid integer"),
    ("out-of-range", {"set": {"train.learning_rate": -1}}, ["train"], "train.learning_rate: Input should be greater than 0"),
    ("missing-field", {"set": {"model.name_or_path": _DELETE}}, ["prepare"], "model.name_or_path: required field is missing"),
    ("override-syntax", {}, ["train", "--set", "train.epochs"], "--set train.epochs: expected dotted.key=value"),
    ("data-file-missing", {"set": {"data.files": {"train": "missing.jsonl"}}}, ["prepare"],
     "data.files.train: file 'missing.jsonl' not found"),
    ("text-column-missing", {"set": {"data.text_columns": ["question"]}}, ["prepare"],
     "column 'question' not found (columns: sentence1, sentence2, label, idx); fix data.text_columns"),
    ("label-column-missing", {"set": {"data.label_column": "gold"}}, ["prepare"], "column 'gold' not found"),
    ("label-not-declared", {"rows": {2: {"label": "maybe"}}, "string_labels": True}, ["train"],
     "row 3: label 'maybe' is not one of the labels ['no', 'yes']"),
    ("label-id-out-of-range", {"rows": {4: {"label": 3}}}, ["train"], "row 5: label 3 is not a label id 0..1"),
    ("label-partly-missing", {"rows": {1: {"label": None}}}, ["prepare"], "row 2: label is missing while other rows have one"),
    ("text-empty", {"rows": {6: {"sentence1": None}}}, ["prepare"], "row 7: column 'sentence1' is empty"),
    ("empty-split", {"empty_train": True}, ["prepare"], "split 'train' has no rows"),
    ("corrupt-parquet", {"corrupt_parquet": True}, ["prepare"], "cannot read it as parquet"),
    ("model-folder-missing", {"set": {"model.name_or_path": "./no/such/model"}}, ["train"],
     "folder './no/such/model' does not exist"),
    ("model-folder-empty", {"empty_model": True}, ["prepare"], "holds no tokenizer files"),
    ("fp16-on-cpu", {"set": {"train.mixed_precision": "fp16"}}, ["train"], "train.mixed_precision: fp16 needs a CUDA GPU"),
    ("metric-for-best-unknown", {"set": {"train.metric_for_best": "bleu"}}, ["train"],
     "train.metric_for_best: 'bleu' is not computed by metric 'mrpc'; choose one of accuracy, f1, loss"),
    ("best-without-metric", {"set": {"train.final_model": "best"}}, ["train"], "final_model: best needs metric_for_best"),
    ("resume-missing-path", {}, ["train", "--resume", "no/such/checkpoint"], "--resume no/such/checkpoint: no such run or checkpoint folder"),
    ("output-dir-is-a-file", {"output_file": True}, ["train"], "is a file, not a folder; choose another output_dir"),
    ("ragged-csv", {"train_text": "sentence1,sentence2,label\na,b,1\nc,d,0,x\n", "suffix": ".csv"}, ["prepare"],
     "line 3: 4 fields, but the header has 3 (sentence1, sentence2, label); quote fields that contain a comma"),
    ("ragged-tsv", {"train_text": "sentence1\tsentence2\tlabel\na\tb\t1\nc\td\n", "suffix": ".tsv"}, ["prepare"],
     "line 3: 2 fields, but the header has 3"),
    ("broken-jsonl", {"train_text": '{"sentence1": "a", "sentence2": "b", "label": 1}\n{"sentence1": "c",\n',
                      "suffix": ".jsonl"}, ["prepare"], "line 2: not valid JSON"),
    ("resume-and-overwrite", {}, ["train", "--resume", "auto", "--overwrite"], "--resume and --overwrite exclude each other"),
    ("eval-model-missing", {}, ["eval", "--model", "no/such/model"], "model folder 'no/such/model' does not exist"),
    ("eval-unknown-split", {"trained": True}, ["eval", "--split", "dev"], "split 'dev' is not in data.files (available: "),
    ("eval-unlabelled-split", {"trained": True}, ["eval", "--split", "test"], "has no labels to evaluate against; use `ftcli predict`"),
    ("train-unknown-split", {"set": {"data.train_split": "training"}}, ["train"], "split 'training' is not in data.files"),
    # What a hostile new user found (issue 19): each of these trained, crashed or lost data before.
    ("yaml-duplicate-key", {"append_yaml": "eval: {metric: accuracy}\n"}, ["train"],
     "eval is given twice (lines 23 and 25); keep one"),
    ("yaml-duplicate-nested-key", {"config_text_from": lambda text: text.replace("  epochs: 8\n", "  epochs: 1\n  epochs: 30\n")},
     ["train"], "train.epochs is given twice (lines 18 and 19); keep one"),
    ("union-list-of-words", {"set": {"train.class_weights": ["heavy", "light"]}}, ["train"],
     "train.class_weights: give auto, a list of numbers, or null (got ['heavy', 'light'])"),
    ("union-word", {}, ["train", "--set", "train.class_weights=balanced"],
     "--set train.class_weights: give auto, a list of numbers, or null (got 'balanced')"),
    ("union-eval-every", {"set": {"train.eval_every": "often"}}, ["train"], "train.eval_every: give an integer, or epoch (got 'often')"),
    ("huge-value-in-file", {"set": {"model.name_or_path": "x" * 1_000_000}}, ["prepare"],
     "model.name_or_path: 'xxxxxxxx"),
    ("huge-value-on-command-line", {}, ["prepare", "--set", "data.files.train=" + "y" * 100_000],
     "is too long to be a path or a model id (100,000 bytes"),
    ("validation-split-typo", {"set": {"data.validation_split": "valid"}}, ["train"],
     "split 'valid' is not in data.files (available: train, validation, test)"),
    ("validation-split-percent-too-big", {"set": {"data.validation_split": "150%"}}, ["train"],
     "data.validation_split: a fraction must lie between 0 and 1, not 1.5"),
    ("text-empty-string", {"rows": {6: {"sentence1": ""}}}, ["prepare"], "row 7: column 'sentence1' is empty"),
    ("text-only-spaces", {"rows": {3: {"sentence2": "   "}}}, ["prepare"], "row 4: column 'sentence2' is empty"),
    ("text-empty-csv-cell", {"train_text": "sentence1,sentence2,label\na,b,1\n,d,0\n", "suffix": ".csv"}, ["prepare"],
     "row 2: column 'sentence1' is empty"),
    ("text-column-of-numbers", {"column_values": {"sentence2": "idx"}}, ["prepare"],
     "column 'sentence2' holds numbers, not texts; fix data.text_columns"),
    ("text-number-in-one-row", {"rows": {2: {"sentence1": 42}}}, ["prepare"],
     "row 3: column 'sentence1' holds 42, not a text"),
    ("labels-list-among-names-jsonl", {"rows": {3: {"label": ["no", "yes"]}}, "string_labels": True}, ["prepare"],
     "row 4: label '[\"no\", \"yes\"]' is a list, but other rows (row 1) hold one label each"),
    ("labels-name-among-lists-csv", {"train_text": 'sentence1,sentence2,label\na,b,"[""no"",""yes""]"\nc,d,no\ne,f,"[""yes""]"\n',
                                     "suffix": ".csv"}, ["prepare"],
     "row 2: label 'no' is one label, but other rows (row 1) hold lists; write it as a list ('[\"no\"]')"),
    ("require-nan", {"trained": True}, ["eval", "--require", "f1>=nan"], "the bound must be a finite number, not nan"),
    ("require-inf", {"trained": True}, ["eval", "--require", "f1<=inf"], "the bound must be a finite number, not inf"),
    ("report-dir-under-a-file", {"trained": True, "a_file": "notes.txt"}, ["eval", "--report-dir", "notes.txt/eval"],
     "--report-dir 'notes.txt/eval': 'notes.txt' is a file, not a folder"),
    ("windows-stride-max-length", {"set": {"data.long_texts": "windows", "data.stride": 48}}, ["train"],
     "data.stride: 48 tokens of overlap do not fit in windows of max_length 48"),
    ("windows-stride-no-new-tokens", {"set": {"data.long_texts": "windows", "data.stride": 45}}, ["prepare"],
     "data.stride: 45 tokens of overlap leave no new tokens in a window of max_length 48 (45 after 3 special tokens)"),
    ("windows-stride-no-new-tokens-validate", {"set": {"data.long_texts": "windows", "data.stride": 45}}, ["validate"],
     "data.stride: 45 tokens of overlap leave no new tokens in a window of max_length 48"),
    ("windows-max-windows-0", {"set": {"data.long_texts": "windows", "data.max_windows": 0}}, ["prepare"],
     "data.max_windows: read at least 1 window of a document, not 0"),
    ("windows-first-text-too-long", {"set": {"data.long_texts": "windows"},
                                     "rows": {5: {"sentence1": " ".join(["cat"] * 60)}}}, ["train"],
     "row 6: its sentence1 alone is 60 tokens, and long_texts: windows keeps the first text whole"),
]


@pytest.mark.parametrize("case_id, setup, command, expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
        case_id, setup, command, expected, tiny_model, tiny_classifier, task_files, tmp_path, monkeypatch):
    from conftest import config_dict

    monkeypatch.chdir(tmp_path)
    cfg = config_dict(tiny_model, task_files, tmp_path)
    rows = make_rows(12, seed=1)
    if setup.get("string_labels"):
        rows = [{**r, "label": ["no", "yes"][r["label"]]} for r in rows]
    for index, change in setup.get("rows", {}).items():
        rows[index] = {**rows[index], **change}
    for column, source in setup.get("column_values", {}).items():
        rows = [{**r, column: r[source]} for r in rows]
    if "rows" in setup or "column_values" in setup:
        cfg["data"]["files"]["train"] = _rows_file(tmp_path, "bad.jsonl", rows)
    if setup.get("empty_train"):
        (tmp_path / "empty.jsonl").write_text("")
        cfg["data"]["files"]["train"] = str(tmp_path / "empty.jsonl")
    if setup.get("corrupt_parquet"):
        (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
        cfg["data"]["files"]["train"] = str(tmp_path / "broken.parquet")
    if "train_text" in setup:
        (tmp_path / f"train{setup['suffix']}").write_text(setup["train_text"])
        cfg["data"]["files"]["train"] = str(tmp_path / f"train{setup['suffix']}")
    if setup.get("output_file"):
        (tmp_path / "a-file").write_text("not a folder")
        cfg["train"]["output_dir"] = str(tmp_path / "a-file")
    if setup.get("empty_model"):
        (tmp_path / "empty-model").mkdir()
        cfg["model"]["name_or_path"] = str(tmp_path / "empty-model")
    for key, value in setup.get("set", {}).items():
        _mutate(cfg, key, value)
    if setup.get("trained"):
        cfg["train"]["output_dir"] = str(tiny_classifier)
    if "a_file" in setup:
        (tmp_path / setup["a_file"]).write_text("the user's own file")
    config_path = tmp_path / setup.get("config_path", "config.yaml")
    if "config_path" not in setup:
        text = setup.get("config_text") or yaml.safe_dump(cfg, sort_keys=False)
        text = setup.get("config_text_from", lambda t: t)(text) + setup.get("append_yaml", "")
        config_path.write_text(text)
    before = {p for p in tmp_path.rglob("*")}

    result = runner.invoke(app, [command[0], "-c", str(config_path), *command[1:]])

    assert result.exit_code == 2, result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert errors and any(expected in e for e in errors), result.stderr[:3000]  # one line per problem
    assert all(len(e) < 1000 for e in errors), "a value quoted in an error must be capped"
    assert "Traceback" not in result.output
    # Progress lines may precede the error (e.g. data prepared fine before a later check failed).
    assert all(line.startswith(("error: ", "data: ", "ftcli train", "  ")) for line in result.stderr.splitlines())
    assert not (tmp_path / "run").exists(), "output_dir must not be created on bad input"
    created = {p for p in tmp_path.rglob("*")} - before
    from ftcli.data.cache import verify_cache

    caches = [p for p in created if p.parent.name == "cache" and p.is_dir() and not p.name.startswith(".")]
    assert all(verify_cache(p) is None for p in caches), f"half-written cache: {caches}"
    assert not [p for p in created if ".tmp" in p.name and p.exists()]


def test_bad_input_messages_stay_one_line_per_problem(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(json.dumps({"model": {}, "data": {"files": {"train": "a.txt"}}, "train": {"epochs": 0}}))
    result = runner.invoke(app, ["train", "-c", str(cfg)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith(f"error: {cfg}:") for line in lines)


def test_every_bad_row_is_reported_up_to_a_cap(tmp_path, tiny_model, task_files):
    """Bad labels in rows 40 and 120 are both named; past ten, the rest are counted."""
    from conftest import config_dict

    rows = make_rows(150, seed=3)
    for index in (39, 119):
        rows[index]["label"] = 7
    cfg = config_dict(tiny_model, {**task_files, "train": write_jsonl(tmp_path / "two.jsonl", rows)}, tmp_path)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["prepare", "-c", str(tmp_path / "c.yaml")])
    assert result.exit_code == 2
    assert [line.split(": ")[2] for line in result.stderr.splitlines()] == ["row 40", "row 120"]

    for index in range(20, 35):
        rows[index]["label"] = 9
    cfg["data"]["files"]["train"] = str(write_jsonl(tmp_path / "many.jsonl", rows))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["prepare", "-c", str(tmp_path / "c.yaml")])
    lines = result.stderr.splitlines()
    assert result.exit_code == 2 and len(lines) == 11
    assert lines[0].endswith("row 21: label 9 is not a label id 0..1 (labels: ['no', 'yes']); fix the row or model.labels")
    assert lines[-1] == "error: ... and 7 more rows like these"
