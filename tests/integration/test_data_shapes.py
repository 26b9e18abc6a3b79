"""Data as it comes: one file with a held-out validation split, imbalanced classes, long texts
(truncation), class weights in the loss."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from conftest import WORDS, config_dict, run_here, write_jsonl
from ftcli.data import cache
from ftcli.config import config_from_dict
from ftcli.errors import FtcliError


def imbalanced_rows(n: int, seed: int = 5) -> list[dict]:
    """Three classes in proportions 6:3:1, with the row's position in the file as `idx`."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.choices(["a", "b", "c"], weights=[6, 3, 1])[0]
        rows.append({"sentence1": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))),
                     "sentence2": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))),
                     "label": label, "idx": i})
    return rows


def one_file_config(tiny_model, tmp_path, rows, cache_dir="cache", **data):
    files = {"train": write_jsonl(tmp_path / "one.jsonl", rows)}
    raw = config_dict(tiny_model, files, tmp_path)
    raw["model"]["labels"] = ["a", "b", "c"]
    raw["data"].update({"validation_split": 0.2, "cache_dir": str(tmp_path / cache_dir), **data})
    return raw


def prepared(raw, overrides=()):
    return cache.prepare(config_from_dict(raw, list(overrides)), log=lambda *_: None)


def idx_of(p, split):
    """A prepared split's rows, each as its token ids."""
    return [tuple(ids) for ids in p.split(split)["input_ids"]]


def test_held_out_validation_is_stratified_seeded_disjoint_and_keyed(tiny_model, tmp_path):
    rows = imbalanced_rows(500)
    raw = one_file_config(tiny_model, tmp_path, rows)
    p = prepared(raw)
    train, val = p.manifest.splits["train"], p.manifest.splits["validation"]
    assert (train.rows, val.rows) == (400, 100)
    assert p.manifest.holdout == {"of": "train", "rows": 100, "train_rows": 400, "requested": 0.2, "seed": 42,
                                     "stratified": True}
    # Each class gives its share (largest remainder: the counts add up to exactly 100).
    total = {name: train.classes[name] + val.classes[name] for name in "abc"}
    assert total == {name: sum(r["label"] == name for r in rows) for name in "abc"}
    for name in "abc":
        assert abs(val.classes[name] - total[name] * 0.2) < 1
    # Disjoint, and together the whole file, each part in file order.
    t, v = idx_of(p, "train"), idx_of(p, "validation")
    whole = idx_of(prepared(raw, ["data.validation_split=validation"]), "train")
    assert len(set(whole)) == len(whole) == 500  # rows are told apart by their tokens
    assert not set(t) & set(v) and sorted(t + v) == sorted(whole)
    assert t == [r for r in whole if r in set(t)] and v == [r for r in whole if r in set(v)]
    # Same rows from a fresh cache (another machine, another process count: the split is data).
    again = prepared(raw, [f"data.cache_dir={tmp_path / 'c2'}"])
    assert idx_of(again, "validation") == v and idx_of(again, "train") == t
    # Another fraction, seed or row count is another cache, and says why.
    for override, share in (("data.validation_split=0.1", 50), ("data.split_seed=7", 100),
                            ("data.validation_split=37", 37)):
        other = prepared(raw, [override])
        assert not other.hit and "validation_split" in other.why_missed
        assert other.manifest.splits["validation"].rows == share
        if override.endswith("seed=7"):
            assert idx_of(other, "validation") != v
    assert prepared(raw).hit


def test_held_out_split_keeps_every_file_row_once(tiny_model, tmp_path):
    """Through the labels: the held-out and kept rows are exactly the file's rows."""
    rows = imbalanced_rows(120, seed=9)
    raw = one_file_config(tiny_model, tmp_path, rows, validation_split=30)
    p = prepared(raw)
    names = p.label_names
    got = sorted([names[i] for i in p.split("train")["labels"]] + [names[i] for i in p.split("validation")["labels"]])
    assert got == sorted(r["label"] for r in rows)
    assert p.manifest.splits["validation"].rows == 30


def test_a_class_with_one_row_stays_in_training(tiny_model, tmp_path):
    rows = imbalanced_rows(60, seed=3)
    for r in rows:
        r["label"] = "a" if r["label"] == "c" else r["label"]
    rows[17]["label"] = "c"
    p = prepared(one_file_config(tiny_model, tmp_path, rows, validation_split=0.5))
    assert p.manifest.splits["train"].classes["c"] == 1
    assert p.absent_classes("validation") == ["c"]


@pytest.mark.parametrize("data, expected", [
    ({"validation_split": 5000}, "one.jsonl: data.validation_split 5000 would hold out 5000 of its 40 rows; give a "
                                 "fraction or a row count between 1 and 39"),
    ({"validation_split": 0.001}, "data.validation_split 0.001 would hold out 0 of its 40 rows"),
    ({"validation_split": 1.5}, "data.validation_split: a fraction must lie between 0 and 1, not 1.5"),
    ({"truncation": "only_second", "text_columns": ["sentence1"]}, "data.truncation: only_second needs two text_columns"),
])
def test_bad_split_or_truncation_settings_are_one_line(tiny_model, tmp_path, data, expected):
    import yaml

    raw = one_file_config(tiny_model, tmp_path, imbalanced_rows(40), **data)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    result = run_here("prepare", "-c", str(tmp_path / "c.yaml"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and expected in result.stderr, result.stderr
    assert not [p for p in (tmp_path / "cache").glob("*") if p.is_dir()]  # nothing half-written left


def test_a_validation_file_and_a_held_out_split_exclude_each_other(tiny_model, tmp_path):
    raw = one_file_config(tiny_model, tmp_path, imbalanced_rows(40))
    raw["data"]["files"]["validation"] = raw["data"]["files"]["train"]
    with pytest.raises(FtcliError, match="data.validation_split: 0.2 holds out part of the training data as split "
                                         "'validation', but files already has one"):
        config_from_dict(raw)


def test_truncation_counts_flags_and_sides(tiny_model, tmp_path):
    """max_length 16: [CLS] a [SEP] b [SEP] fits 13 words in all. Rows 2 and 5 are too long;
    row 3 fills the window exactly and is not cut."""
    def words(n):
        return " ".join(["dog"] * n)

    rows = [{"sentence1": words(3), "sentence2": words(3), "label": "a"},
            {"sentence1": words(3), "sentence2": words(3), "label": "b"},
            {"sentence1": words(12), "sentence2": words(4), "label": "a"},
            {"sentence1": words(7), "sentence2": words(6), "label": "b"},
            {"sentence1": words(2), "sentence2": words(2), "label": "c"},
            {"sentence1": words(3), "sentence2": words(20), "label": "a"}]
    raw = one_file_config(tiny_model, tmp_path, rows, validation_split="validation", max_length=16)
    p = prepared(raw)
    ds = p.split("train")
    assert ds["truncated"] == [False, False, True, False, False, True]
    assert p.manifest.splits["train"].truncated == 2
    assert ds["length"][3] == 16
    # only_second keeps the whole first text; only_first the whole second (row 6's second text
    # alone is too long for it: left out here, see the next test).
    second = prepared(raw, ["data.truncation=only_second"]).split("train")["token_type_ids"][5]
    assert len(second) == 16 and len(second) - sum(second) == 5  # [CLS] + 3 words + [SEP], uncut
    raw = one_file_config(tiny_model, tmp_path, rows[:5], validation_split="validation", max_length=16,
                          truncation="only_first")
    first = prepared(raw).split("train")["token_type_ids"][2]
    assert len(first) == 16 and sum(first) == 5  # 4 words + [SEP] of the second text, uncut


def test_only_second_names_the_row_it_cannot_fit(tiny_model, tmp_path):
    rows = [{"sentence1": "dog cat", "sentence2": "dog", "label": "a"}] * 3 + [
        {"sentence1": " ".join(["dog"] * 30), "sentence2": "cat", "label": "b"}]
    raw = one_file_config(tiny_model, tmp_path, rows, validation_split="validation", max_length=16,
                          truncation="only_second")
    with pytest.raises(FtcliError, match=r"one.jsonl: row 4: truncation only_second cannot fit it into max_length 16"):
        prepared(raw)


def test_class_weights_scale_each_rows_loss_by_its_class():
    """By hand for one batch: the loss is the mean over rows of w[y] x cross-entropy."""
    import torch

    from ftcli.training.plan import Plan, batch_loss

    torch.manual_seed(0)
    logits, labels = torch.randn(4, 3), torch.tensor([0, 2, 2, 1])
    weights = torch.tensor([0.5, 1.0, 3.0])
    plan = Plan(processes=1, batch_size=4, accumulation=1, micro_batches_per_epoch=1, steps_per_epoch=1, total_steps=1,
                epochs=1, warmup_steps=0)
    loss, real = batch_loss(logits, labels, 0, plan, 0, 4, False, weights)
    log_p = torch.log_softmax(logits, -1)
    by_hand = sum(-float(weights[y]) * float(log_p[i, y]) for i, y in enumerate(labels.tolist())) / 4
    assert real == 4 and abs(float(loss) - by_hand) < 1e-6
    plain, _ = batch_loss(logits, labels, 0, plan, 0, 4, False)
    assert abs(float(plain) - float(-log_p[range(4), labels].mean())) < 1e-6 and abs(float(plain) - by_hand) > 0.1
    # and a weight per row (windows' shares of their documents) on top
    rows = torch.tensor([0.5, 0.5, 2.0, 1.0])
    both, _ = batch_loss(logits, labels, 0, plan, 0, 4, False, weights, weights=rows)
    by_hand = sum(-float(rows[i] * weights[y]) * float(log_p[i, y]) for i, y in enumerate(labels.tolist())) / 4
    assert abs(float(both) - by_hand) < 1e-6


def test_auto_class_weights_are_inverse_frequency(tiny_model, tmp_path):
    from ftcli.training.setup import class_weights

    rows = imbalanced_rows(500)
    raw = one_file_config(tiny_model, tmp_path, rows)
    cfg = config_from_dict(raw, ["train.class_weights=auto"])
    p = cache.prepare(cfg, log=lambda *_: None)
    counts = p.manifest.splits["train"].classes
    weights = class_weights(cfg.train, p, "train")
    assert weights == pytest.approx([400 / (3 * counts[n]) for n in "abc"])
    assert sum(w * counts[n] for w, n in zip(weights, "abc")) == pytest.approx(400)  # the average row weighs 1
    with pytest.raises(FtcliError, match=r"train.class_weights: 2 weights for 3 labels \(a, b, c\); give one weight "
                                         "per label"):
        class_weights(config_from_dict(raw, ["train.class_weights=[1.0, 2.0]"]).train, p, "train")


def test_class_report_of_a_known_confusion_matrix_matches_scikit_learn(tmp_path):
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    from ftcli.evaluation.reports import class_report, write_report

    refs = [0, 0, 0, 1, 1, 2, 2, 2, 2]
    preds = [0, 1, 0, 1, 2, 2, 2, 0, 2]
    report = class_report(preds, refs, ["a", "b", "c"])
    assert report["confusion_matrix"] == [[2, 1, 0], [0, 1, 1], [1, 0, 3]]
    assert report["confusion_matrix"] == confusion_matrix(refs, preds).tolist()
    precision, recall, f1, support = precision_recall_fscore_support(refs, preds, zero_division=0)
    for i, name in enumerate("abc"):
        row = report["per_class"][name]
        assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
            (precision[i], recall[i], f1[i], support[i]), abs=1e-6)
    # A class never predicted and one never present: 0, as scikit-learn's zero_division=0.
    sparse = class_report([0, 0], [0, 1], ["a", "b", "c"])["per_class"]
    assert sparse["b"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1}
    assert sparse["c"]["support"] == 0
    # 30 labels: a real PNG, large enough to read.
    from PIL import Image

    names = [f"label_{i:02d}" for i in range(30)]
    rng = np.random.default_rng(0)
    r = rng.integers(0, 30, 600)
    path = write_report(tmp_path / "r", {"labels": names, **class_report(np.where(rng.random(600) < 0.7, r,
                                          rng.integers(0, 30, 600)), r, names)}, "30 classes")
    assert json.loads(path.read_text())["labels"] == names
    with Image.open(tmp_path / "r" / "confusion_matrix.png") as image:
        assert image.format == "PNG" and min(image.size) >= 1200


def test_multi_label_report_matches_scikit_learn_and_draws_a_panel_per_label(tmp_path):
    from PIL import Image
    from sklearn.metrics import multilabel_confusion_matrix, precision_recall_fscore_support

    from ftcli.evaluation.reports import multi_label_report, write_report

    rng = np.random.default_rng(1)
    names = [f"topic_{i:02d}" for i in range(30)]
    refs = (rng.random((400, 30)) < 0.2).astype(int)
    preds = np.where(rng.random((400, 30)) < 0.8, refs, 1 - refs)
    report = multi_label_report(preds, refs, names)
    for i, matrix in enumerate(multilabel_confusion_matrix(refs, preds)):  # [[tn, fp], [fn, tp]]
        c = report["label_confusion"][names[i]]
        assert [[c["tn"], c["fp"]], [c["fn"], c["tp"]]] == matrix.tolist()
    precision, recall, f1, support = precision_recall_fscore_support(refs, preds, zero_division=0)
    row = report["per_class"][names[7]]
    assert (row["precision"], row["recall"], row["f1"], row["support"]) == pytest.approx(
        (precision[7], recall[7], f1[7], support[7]), abs=1e-6)
    path = write_report(tmp_path / "r", report, "30 labels")
    assert json.loads(path.read_text())["label_confusion"] == report["label_confusion"]
    with Image.open(tmp_path / "r" / "confusion_matrix.png") as image:  # 5 rows of 6 panels
        assert image.format == "PNG" and image.size[0] >= 1400 and image.size[1] >= 1200
        wide = image.size
    write_report(tmp_path / "two", multi_label_report(preds[:, :2], refs[:, :2], names[:2]), "2 labels")
    with Image.open(tmp_path / "two" / "confusion_matrix.png") as image:  # sized by the labels
        assert image.size[0] < wide[0] / 2 and image.size[1] < wide[1] / 3


def colour_rows(n: int, seed: int) -> list[dict]:
    """Learnable and imbalanced: the first word of sentence1 names the class (red a, blue b,
    green c), in proportions 6:3:1."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.choices(["a", "b", "c"], weights=[6, 3, 1])[0]
        first = {"a": "red", "b": "blue", "c": "green"}[label]
        rows.append({"sentence1": first + " " + " ".join(rng.choice(WORDS[:12]) for _ in range(rng.randint(3, 8))),
                     "sentence2": " ".join(rng.choice(WORDS[:12]) for _ in range(rng.randint(3, 8))),
                     "label": label, "idx": i})
    return rows


@pytest.mark.slow
def test_one_file_with_class_weights_trains_and_reports_per_class(tiny_model, tmp_path):
    """One file in: a held-out validation split, auto class weights, and the per-class report of
    train and eval, which agree (scikit-learn's figures: test_class_report_of_a_known_...)."""
    import yaml
    from PIL import Image

    raw = one_file_config(tiny_model, tmp_path, colour_rows(300, seed=1), validation_split=0.2)
    raw["train"].update(epochs=3, batch_size=16, class_weights="auto")
    raw["eval"]["metric"] = "auto"
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    trained = run_here("train", "-c", str(tmp_path / "c.yaml"), "--json")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert "class weights" in trained.stderr and "validation: 60 rows" in trained.stderr
    summary = json.loads(trained.stdout)
    report = json.loads((tmp_path / "run" / "eval" / "validation" / "eval_report.json").read_text())
    assert summary["per_class"] == report["per_class"] and summary["report"].endswith("eval_report.json")
    assert sum(sum(row) for row in report["confusion_matrix"]) == 60
    assert [report["per_class"][n]["support"] for n in "abc"] == [sum(r) for r in report["confusion_matrix"]]
    with Image.open(tmp_path / "run" / "eval" / "validation" / "confusion_matrix.png") as image:
        assert image.format == "PNG"
    # eval of the same model and split, for people: the table, and the same report rewritten.
    from typer.testing import CliRunner

    from ftcli.cli import app

    human = CliRunner().invoke(app, ["eval", "-c", str(tmp_path / "c.yaml")])  # in this process
    assert human.exit_code == 0, human.stderr[-3000:]
    assert "precision" in human.stdout and "support" in human.stdout
    rewritten = json.loads((tmp_path / "run" / "eval" / "validation" / "eval_report.json").read_text())
    assert rewritten["per_class"] == summary["per_class"]
    per_class = summary["per_class"]
    assert per_class["c"]["recall"] > 0  # the rare class is learned


def tag_rows(n: int, seed: int, form: str = "names") -> list[dict]:
    """Multi-label and learnable: each of red, blue, green in sentence1 tags the row with a, b, c
    (at least one per row). `form`: lists of names, or id strings such as "0,2"."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        tags = [t for t in range(3) if rng.random() < 0.4] or [rng.randrange(3)]
        words = [rng.choice(WORDS[:12]) for _ in range(rng.randint(3, 7))] + [("red", "blue", "green")[t] for t in tags]
        rng.shuffle(words)
        label = [("a", "b", "c")[t] for t in tags] if form == "names" else ",".join(str(t) for t in tags)
        rows.append({"sentence1": " ".join(words), "sentence2": " ".join(rng.choice(WORDS[:12]) for _ in range(4)),
                     "label": label, "idx": i})
    return rows


def multi_label_config(tiny_model, tmp_path, form="names", **train):
    files = {"train": write_jsonl(tmp_path / f"ml-train-{form}.jsonl", tag_rows(250, 1, form)),  # a short last batch
             "validation": write_jsonl(tmp_path / f"ml-val-{form}.jsonl", tag_rows(60, 2, form))}
    raw = config_dict(tiny_model, files, tmp_path, **{"epochs": 10, "batch_size": 16, **train})
    raw["model"].pop("labels")
    raw["eval"]["metric"] = "auto"
    if form == "ids":
        raw["data"]["label_separator"] = ","
    return raw


def test_label_lists_and_separated_ids_prepare_alike(tiny_model, tmp_path):
    """["a", "c"] and "0,2" (with label_separator) are the same label set."""
    named = cache.prepare(config_from_dict(multi_label_config(tiny_model, tmp_path, "names")), log=lambda *_: None)
    ids = cache.prepare(config_from_dict(multi_label_config(tiny_model, tmp_path, "ids")), log=lambda *_: None)
    assert named.is_multi_label and ids.is_multi_label
    assert named.label_names == ["a", "b", "c"] and ids.label_names == ["0", "1", "2"]
    for split in ("train", "validation"):
        assert named.split(split)["labels"] == ids.split(split)["labels"]
        assert list(named.manifest.splits[split].classes.values()) == \
            list(ids.manifest.splits[split].classes.values())
    first = tag_rows(250, 1)[0]["label"]
    assert named.split("train")["labels"][0] == [float(n in first) for n in "abc"]


@pytest.mark.slow
@pytest.mark.parametrize("form", ["names"])  # "ids" prepares to the same rows (test above)
def test_multi_label_end_to_end_matches_scikit_learn(tiny_model, tmp_path, form):
    import yaml
    from sklearn.metrics import f1_score, precision_score, recall_score

    raw = multi_label_config(tiny_model, tmp_path, form)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    trained = run_here("train", "-c", str(tmp_path / "c.yaml"), "--json")
    assert trained.returncode == 0, trained.stderr[-3000:]
    summary = json.loads(trained.stdout)
    names = ["a", "b", "c"] if form == "names" else ["0", "1", "2"]
    assert summary["metric"] == "multilabel" and list(summary["per_class"]) == names
    config = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    from typer.testing import CliRunner

    from ftcli.cli import app

    # eval and predict in this process (the training above is the user's own process)
    evaluated = CliRunner().invoke(app, ["eval", "-c", str(tmp_path / "c.yaml"), "--json", "--best-threshold"])
    assert evaluated.exit_code == 0, evaluated.stderr[-3000:]
    result = json.loads(evaluated.stdout)
    assert {"f1_micro", "f1_macro", "precision_micro", "recall_micro", "subset_accuracy"} <= set(result)
    assert 0.05 <= result["best_threshold"]["threshold"] <= 0.95
    assert result["best_threshold"]["f1_micro"] >= result["f1_micro"] - 1e-6
    # predict's label sets, scored by scikit-learn, give eval's numbers.
    out = tmp_path / "p.jsonl"
    predicted = CliRunner().invoke(app, ["predict", "-c", str(tmp_path / "c.yaml"), "-i",
                                         raw["data"]["files"]["validation"], "-o", str(out)])
    assert predicted.exit_code == 0, predicted.stderr[-3000:]
    records = [json.loads(line) for line in out.read_text().splitlines()]
    pred = np.array([[name in r["labels"] for name in names] for r in records], dtype=int)
    true_sets = [set(r["label"]) if form == "names" else set(r["label"].split(",")) for r in tag_rows(60, 2, form)]
    true = np.array([[name in s for name in names] for s in true_sets], dtype=int)
    assert result["f1_micro"] == pytest.approx(f1_score(true, pred, average="micro", zero_division=0), abs=1e-6)
    assert result["f1_macro"] == pytest.approx(f1_score(true, pred, average="macro", zero_division=0), abs=1e-6)
    assert result["precision_micro"] == pytest.approx(precision_score(true, pred, average="micro", zero_division=0))
    assert result["recall_micro"] == pytest.approx(recall_score(true, pred, average="micro", zero_division=0))
    assert result["subset_accuracy"] == pytest.approx(float((pred == true).all(1).mean()))
    assert result["f1_micro"] > 0.7  # learned: predicting every tag scores about 0.62
    for r in records:
        assert set(r["probabilities"]) == set(names)
        assert r["labels"] == [n for n in names if r["probabilities"][n] >= 0.5]


@pytest.mark.slow
def test_multi_label_training_is_exact_on_two_processes(tiny_model_no_dropout, tmp_path):
    """1 process x 16 rows and 2 x 8 train alike (no dropout: masks differ between processes)."""
    import yaml

    from conftest import accelerate_launch

    for name, batch in (("one", 16), ("two", 8)):
        raw = multi_label_config(tiny_model_no_dropout, tmp_path, batch_size=batch, class_weights="auto",
                                 output_dir=str(tmp_path / name), epochs=3)
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(raw))
    one = run_here("train", "-c", str(tmp_path / "one.yaml"), "--json")
    two = accelerate_launch("train", "-c", str(tmp_path / "two.yaml"), "--json")
    assert one.returncode == 0 and two.returncode == 0, one.stderr[-2000:] + two.stderr[-2000:]
    a, b = json.loads(one.stdout), json.loads(two.stdout)
    assert b["processes"] == 2 and a["steps"] == b["steps"]
    for key in ("loss", "f1_micro", "f1_macro", "subset_accuracy"):
        assert a["eval"][key] == pytest.approx(b["eval"][key], abs=1e-4), key
    assert a["per_class"] == b["per_class"]


@pytest.mark.parametrize("label, data, expected", [
    (["a", "purple"], {}, "row 3: label 'purple' is not one of the labels ['a', 'b', 'c']"),
    ([], {}, "1 of 6 rows has no labels (row 3); in a multi-label column a blank cell or [] is an empty label set: "
             "set data.allow_empty_labels: true"),
    (",", {"label_separator": ","}, "row 3: label ',' holds no labels when split on ','"),
])
def test_bad_multi_label_rows_are_one_line_naming_file_and_row(tiny_model, tmp_path, label, data, expected):
    import yaml

    rows = tag_rows(6, 4)
    if data.get("label_separator"):
        for r in rows:
            r["label"] = ",".join(r["label"])
    rows[2]["label"] = label
    files = {"train": write_jsonl(tmp_path / "ml.jsonl", rows)}
    raw = config_dict(tiny_model, files, tmp_path)
    raw["model"]["labels"] = ["a", "b", "c"]
    raw["data"].update(data)
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    from typer.testing import CliRunner

    from ftcli.cli import app

    result = CliRunner().invoke(app, ["prepare", "-c", str(tmp_path / "c.yaml")])  # in-process: no start-up cost
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and f"ml.jsonl: {expected}" in result.stderr, result.stderr
    allowed = CliRunner().invoke(app, ["prepare", "-c", str(tmp_path / "c.yaml"), "--set", "data.allow_empty_labels=true"])
    assert (allowed.exit_code == 0) == (label != ["a", "purple"]), allowed.stderr


@pytest.mark.slow
def test_init_drafts_a_config_that_trains_as_is(tiny_model, tmp_path):
    """A CSV with an id, two texts, a multi-label column ("x|y") and a second label-like column:
    init picks the pair and the labels, names the alternative, and `ftcli train` runs the file."""
    import csv

    import yaml

    rng = random.Random(0)
    with open(tmp_path / "news.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "headline", "body", "topics", "source"])
        for i in range(120):
            tags = sorted(rng.sample(["a", "b", "c"], rng.randint(1, 2)))
            body = " ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 30) if i else 80))
            writer.writerow([i, " ".join(rng.choice(WORDS) for _ in range(5)), body, "|".join(tags),
                             rng.choice(["ap", "afp"])])
    out = tmp_path / "drafted.yaml"
    from typer.testing import CliRunner

    from ftcli.cli import app

    made = CliRunner().invoke(app, ["init", "--data", str(tmp_path / "news.csv"), "--model", str(tiny_model), "-o",
                                    str(out), "--json"])
    assert made.exit_code == 0, made.stderr
    result = json.loads(made.stdout)
    assert result["text_columns"] == ["headline", "body"] and result["label_column"] == "topics"
    assert result["multi_label"] and result["label_separator"] == "|" and result["labels"] == ["a", "b", "c"]
    text = out.read_text()
    assert "# other candidates: source (2 values)" in text and "validation_split: 0.1" in text
    # max_length covers ~99% of rows: all but the one long row fit.
    assert "covers 99.2% of 120 sampled rows" in text
    again = CliRunner().invoke(app, ["init", "--data", str(tmp_path / "news.csv"), "-o", str(out)])
    assert again.exit_code == 2 and "exists; choose another --output or pass --force" in again.stderr
    cfg = yaml.safe_load(text)
    cfg["data"]["cache_dir"] = str(tmp_path / "cache")
    cfg["train"].update(output_dir=str(tmp_path / "run"), epochs=1, mixed_precision="no")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    trained = run_here("train", "-c", str(tmp_path / "run.yaml"), "--json")
    assert trained.returncode == 0, trained.stderr[-3000:]
    assert json.loads(trained.stdout)["metric"] == "multilabel"


def test_json_lists_in_csv_cells_are_multi_label(tiny_model, tmp_path):
    import csv

    with open(tmp_path / "tags.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence1", "sentence2", "label"])
        for r in tag_rows(20, 6):
            writer.writerow([r["sentence1"], r["sentence2"], json.dumps(r["label"])])
    raw = config_dict(tiny_model, {"train": tmp_path / "tags.csv"}, tmp_path)
    raw["model"].pop("labels")
    p = cache.prepare(config_from_dict(raw), log=lambda *_: None)
    assert p.is_multi_label and p.label_names == ["a", "b", "c"]
    assert p.split("train")["labels"][0] == [float(n in tag_rows(20, 6)[0]["label"]) for n in "abc"]


def test_csv_text_cells_are_read_as_written_and_only_labels_have_missing_words(tiny_model, tmp_path):
    """`NA`, `None`, `null` and `007` are texts; in the label column a blank or `NA` is no label."""
    from ftcli.data import load_raw

    (tmp_path / "t.csv").write_text('sentence1,sentence2,label\nNA,None,a\nnull,007,b\n1.50,"",NA\nn/a,x,\n')
    raw = config_dict(tiny_model, {"train": tmp_path / "t.csv"}, tmp_path)
    data = config_from_dict(raw).data
    ds = load_raw(data, tmp_path / "raw")["train"]
    assert ds["sentence1"] == ["NA", "null", "1.50", "n/a"]
    assert ds["sentence2"] == ["None", "007", "", "x"]
    assert ds["label"] == ["a", "b", None, None]


def test_a_percentage_holds_out_the_same_rows_as_the_fraction(tiny_model, tmp_path):
    rows = imbalanced_rows(200)
    as_fraction = prepared(one_file_config(tiny_model, tmp_path, rows, validation_split=0.1))
    as_percent = prepared(one_file_config(tiny_model, tmp_path, rows, validation_split="10%"))
    assert as_percent.hit and as_percent.path == as_fraction.path
    assert as_percent.manifest.splits["validation"].rows == 20


def test_killed_prepare_leftovers_are_removed_by_the_next_prepare(tiny_model, tmp_path):
    """A build killed mid-way leaves `.tmp-<key>-<pid>@<host>`: the next prepare removes those
    whose process is gone (and old-style ones without a host), never a live builder's."""
    import os
    import socket
    import subprocess
    import sys

    raw = one_file_config(tiny_model, tmp_path, imbalanced_rows(60))
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    gone = [cache_dir / f".tmp-0123456789abcdef-{pid}@{socket.gethostname()}", cache_dir / f".tmp-00000000000000ff-{pid}",
            cache_dir / f"one-0123456789abcdef.stale-{pid}@{socket.gethostname()}"]
    alive = [cache_dir / f".tmp-0123456789abcdef-{os.getpid()}@{socket.gethostname()}",
             cache_dir / f".tmp-0123456789abcdef-{pid}@another-host"]
    for folder in gone + alive:
        (folder / "dataset").mkdir(parents=True)
        (folder / "dataset" / "train.arrow").write_bytes(b"x" * 1000)
    prepared(raw)
    assert not any(folder.exists() for folder in gone)
    assert all(folder.exists() for folder in alive)


def test_prepare_killed_with_sigkill_mid_build_leaves_nothing_after_the_next_one(tiny_model, tmp_path):
    import signal
    import subprocess
    import sys
    import time

    import yaml

    raw = one_file_config(tiny_model, tmp_path, imbalanced_rows(3000))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    cache_dir = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-m", "ftcli", "prepare", "-c", str(tmp_path / "c.yaml")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (cache_dir.is_dir() and list(cache_dir.glob(".tmp-*"))) and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    leftovers = list(cache_dir.glob(".tmp-*"))
    assert leftovers, "the build finished before the kill"
    result = run_here("prepare", "-c", str(tmp_path / "c.yaml"))
    assert result.returncode == 0, result.stderr
    assert f"removed {leftovers[0]}, left by a prepare that was killed" in result.stdout + result.stderr
    assert not list(cache_dir.glob(".tmp-*"))
