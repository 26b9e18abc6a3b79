"""`data.long_texts: windows` end to end: documents longer than max_length are read whole, in
windows; training, eval and predict count documents; 2 processes equal 1."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import WORDS, accelerate_launch, run_here, write_jsonl

FILLER = [w for w in WORDS if w not in ("good", "bad")]
MAX_LENGTH, STRIDE = 32, 8  # 30 tokens of text a window, 22 new ones after the first


def long_rows(n: int, seed: int, early: float) -> list[dict]:
    """Documents of 45 to 110 words whose label is told by one word, "good" (yes) or "bad" (no):
    in the first window for a share `early` of them, else only past it (from word 40 on)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = rng.randint(0, 1)
        words = [rng.choice(FILLER) for _ in range(rng.randint(45, 110))]
        at = rng.randrange(0, 25) if rng.random() < early else rng.randrange(40, len(words))
        words.insert(at, "good" if label else "bad")
        rows.append({"id": f"doc-{i}", "text": " ".join(words), "label": label})
    return rows


@pytest.fixture(scope="module")
def long_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("long")
    return {"train": write_jsonl(folder / "train.jsonl", long_rows(160, seed=1, early=0.5)),
            # the evidence of every validation document lies past its first window
            "validation": write_jsonl(folder / "validation.jsonl", long_rows(60, seed=2, early=0.0))}


def long_config(tmp_path: Path, model: Path, files: dict, name: str, long_texts: str = "windows",
                data: dict | None = None, **train) -> Path:
    cfg = {
        "model": {"name_or_path": str(model), "labels": ["no", "yes"]},
        "data": {"files": {k: str(v) for k, v in files.items()}, "text_columns": ["text"],
                 "max_length": MAX_LENGTH, "long_texts": long_texts, "stride": STRIDE,
                 "cache_dir": str(tmp_path / "cache"), **(data or {})},
        "train": {"output_dir": str(tmp_path / name), "epochs": 6, "batch_size": 8, "learning_rate": 2e-3,
                  "mixed_precision": "no", "log_every": 20, "checkpoint_every": None, **train},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def cli_json(*args: str) -> dict:
    result = run_here(*args, "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def tokenizer_windows(model: Path, texts: list[str]) -> list[int]:
    """Windows per text, as the tokenizer itself cuts them."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    enc = tok(texts, truncation=True, max_length=MAX_LENGTH, stride=STRIDE, return_overflowing_tokens=True)
    return np.bincount(enc["overflow_to_sample_mapping"], minlength=len(texts)).tolist()


@pytest.mark.integration
def test_windows_read_the_evidence_that_truncation_never_sees(tiny_model, long_files, tmp_path):
    texts = [json.loads(x)["text"] for x in long_files["validation"].read_text().splitlines()]
    windows = tokenizer_windows(tiny_model, texts)
    trained = cli_json("train", "-c", str(long_config(tmp_path, tiny_model, long_files, "windows")))
    assert trained["eval"]["samples"] == 60 and trained["eval"]["windows"] == sum(windows)

    def evaluate(run: str, long_texts: str, pooling: str = "mean") -> dict:
        cfg = long_config(tmp_path, tiny_model, long_files, f"eval-{run}-{long_texts}-{pooling}", long_texts)
        text = yaml.safe_load(cfg.read_text())
        cfg.write_text(yaml.safe_dump({**text, "eval": {"window_pooling": pooling}}))
        return cli_json("eval", "-c", str(cfg), "--model", str(tmp_path / run / "model"))

    # The model trained on windows, evaluated both ways: only windows reach the evidence.
    whole, cut = evaluate("windows", "windows"), evaluate("windows", "truncate")
    assert whole["samples"] == cut["samples"] == 60  # documents, either way
    assert whole["accuracy"] == trained["eval"]["accuracy"] >= 0.85
    assert cut["accuracy"] <= 0.7 and whole["accuracy"] - cut["accuracy"] >= 0.25
    report = json.loads(Path(whole["report"]).read_text())
    assert sum(map(sum, report["confusion_matrix"])) == 60  # documents, not windows

    # A model trained on truncated texts that hold their evidence early reads long documents
    # better with windows too; it never saw a window without evidence, so its confident guesses
    # there dilute a mean (measured: 0.70), and max pooling finds the one window that tells (1.0).
    early = {**long_files, "train": write_jsonl(tmp_path / "early.jsonl", long_rows(160, seed=4, early=1.0))}
    cli_json("train", "-c", str(long_config(tmp_path, tiny_model, early, "truncate", "truncate", epochs=10)))
    cut = evaluate("truncate", "truncate")
    mean, most = evaluate("truncate", "windows"), evaluate("truncate", "windows", "max")
    assert cut["accuracy"] <= 0.6 and mean["accuracy"] >= cut["accuracy"] + 0.15
    assert most["accuracy"] >= 0.9, (cut["accuracy"], mean["accuracy"], most["accuracy"])


def test_predict_writes_one_row_per_document_in_input_order(tiny_classifier, long_files, tmp_path):
    """Probabilities are the mean of the windows' softmax inputs (logits), computed here by hand
    from the model's windows; `max_windows` cuts are flagged."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = [json.loads(x) for x in long_files["validation"].read_text().splitlines()][:25]
    source = write_jsonl(tmp_path / "docs.jsonl", [{"id": r["id"], "text": r["text"]} for r in rows])
    cfg = long_config(tmp_path, tiny_classifier, long_files, "predict", data={"max_windows": 4})
    out = cli_json("predict", "-c", str(cfg), "--model", str(tiny_classifier), "--input", str(source),
                   "--output", str(tmp_path / "p.jsonl"), "--keep", "id")
    written = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert [w["row"] for w in written] == list(range(25)) and [w["id"] for w in written] == [r["id"] for r in rows]
    whole = tokenizer_windows(tiny_classifier, [r["text"] for r in rows])
    assert [w["windows"] for w in written] == [min(n, 4) for n in whole]
    assert [w["truncated"] for w in written] == [n > 4 for n in whole] and any(n > 4 for n in whole)
    assert out["rows"] == 25 and out["truncated"] == sum(n > 4 for n in whole)
    assert out["windows"] == sum(min(n, 4) for n in whole)

    tok = AutoTokenizer.from_pretrained(tiny_classifier)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier).eval()
    enc = tok([r["text"] for r in rows], truncation=True, max_length=MAX_LENGTH, stride=STRIDE,
              return_overflowing_tokens=True)
    docs = np.asarray(enc["overflow_to_sample_mapping"])
    for d, w in enumerate(written):
        picked = np.flatnonzero(docs == d)[:4]
        with torch.no_grad():
            logits = torch.cat([model(input_ids=torch.tensor([enc["input_ids"][i]]),
                                      token_type_ids=torch.tensor([enc["token_type_ids"][i]])).logits
                                for i in picked])
        probs = torch.softmax(logits.mean(0), -1).tolist()
        assert [w["probabilities"]["no"], w["probabilities"]["yes"]] == pytest.approx(probs, abs=2e-6)

    max_cfg = long_config(tmp_path, tiny_classifier, long_files, "predict-max", data={"max_windows": 4})
    text = yaml.safe_load(max_cfg.read_text())
    text["eval"] = {"window_pooling": "max"}
    max_cfg.write_text(yaml.safe_dump(text))
    cli_json("predict", "-c", str(max_cfg), "--model", str(tiny_classifier), "--input", str(source),
             "--output", str(tmp_path / "max.csv"))
    header, *lines = (tmp_path / "max.csv").read_text().splitlines()
    assert header == "row,label,label_id,p_no,p_yes,truncated,windows" and len(lines) == 25


def test_prepare_reports_documents_windows_and_the_cap(tiny_model, long_files, tmp_path):
    cfg = long_config(tmp_path, tiny_model, long_files, "prep", data={"max_windows": 3})
    texts = [json.loads(x)["text"] for x in long_files["train"].read_text().splitlines()]
    windows = tokenizer_windows(tiny_model, texts)
    out = cli_json("prepare", "-c", str(cfg))
    split = out["splits"]["train"]
    assert out["long_texts"] == "windows" and out["windows"] == {"stride": STRIDE, "max_windows": 3,
                                                                 "max_length": MAX_LENGTH}
    assert split["documents"] == 160 and split["windows"] == split["rows"] == sum(min(n, 3) for n in windows)
    assert split["most_windows"] == 3 and split["truncated"] == sum(n > 3 for n in windows) > 0
    assert split["mean_windows"] == pytest.approx(split["rows"] / 160, abs=1e-4)
    assert sum(split["classes"].values()) == 160  # documents per class
    shown = run_here("prepare", "-c", str(cfg))
    assert (f"train: 160 documents in {split['rows']:,} windows (mean {split['rows'] / 160:.2f}, most 3)"
            in shown.stderr + shown.stdout)
    assert f"{split['truncated']} documents cut at max_windows 3" in shown.stderr + shown.stdout

    # the windows settings are part of the cache key; the default stride keys as spelled out
    default = long_config(tmp_path, tiny_model, long_files, "prep-default", data={"stride": None})
    spelled = long_config(tmp_path, tiny_model, long_files, "prep-spelled", data={"stride": MAX_LENGTH // 4})
    first = cli_json("prepare", "-c", str(default))
    assert cli_json("prepare", "-c", str(spelled))["key"] == first["key"]
    for changed, why in (({"stride": 4}, "windows"), ({"max_windows": 2}, "windows")):
        other = long_config(tmp_path, tiny_model, long_files, "prep-other", data=changed)
        again = cli_json("prepare", "-c", str(other))
        assert again["cache"] == "built" and again["key"] != first["key"] and why in again["why"]
    plain = long_config(tmp_path, tiny_model, long_files, "prep-plain", "truncate")
    assert cli_json("prepare", "-c", str(plain))["key"] != first["key"]


def test_init_proposes_windows_when_many_rows_are_longer_than_max_length(tiny_model, tmp_path):
    long = write_jsonl(tmp_path / "long.jsonl", [{"text": r["text"], "label": r["label"]}
                                                for r in long_rows(80, seed=3, early=0.5)])
    made = cli_json("init", "--data", str(long), "--model", str(tiny_model), "-o", str(tmp_path / "long.yaml"))
    over = made["rows_over_max_length"]
    assert made["long_texts"] == "windows" and over > 40
    text = (tmp_path / "long.yaml").read_text()
    assert "long_texts: windows" in text and f"{over} rows ({over / 80:.0%}) are longer than the model's 64" in text
    cfg = yaml.safe_load(text)
    cfg["data"]["cache_dir"] = str(tmp_path / "cache")
    cfg["train"].update(output_dir=str(tmp_path / "run"), epochs=1, mixed_precision="no")
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(cfg))
    assert cli_json("train", "-c", str(tmp_path / "run.yaml"))["eval"]["samples"] == 8  # documents held out

    short = write_jsonl(tmp_path / "short.jsonl", [{"text": " ".join(r["text"].split()[:20]), "label": r["label"]}
                                                  for r in long_rows(80, seed=3, early=1.0)])
    made = cli_json("init", "--data", str(short), "--model", str(tiny_model), "-o", str(tmp_path / "short.yaml"))
    assert made["long_texts"] == "truncate" and "long_texts" not in (tmp_path / "short.yaml").read_text()


@pytest.mark.slow
@pytest.mark.multiprocess
def test_two_processes_train_eval_and_predict_windows_like_one(tiny_model_no_dropout, long_files, tmp_path):
    """2 x 4 train like 1 x 8; evaluation and prediction pool documents whose windows were
    evaluated on both processes (checked below) into the 1-process numbers."""
    from ftcli.config import load_config
    from ftcli.data import SortedSampler, prepare

    common = dict(data={"files": {k: str(v) for k, v in long_files.items()}}, epochs=1, log_every=1,
                  eval_batch_size=4)
    one_cfg = long_config(tmp_path, tiny_model_no_dropout, long_files, "one", **common)
    two_cfg = long_config(tmp_path, tiny_model_no_dropout, long_files, "two", batch_size=4, **common)
    one = cli_json("train", "-c", str(one_cfg))
    launched = accelerate_launch("train", "-c", str(two_cfg), "--json")
    assert launched.returncode == 0, launched.stderr[-3000:]
    two = json.loads(launched.stdout)
    assert two["processes"] == 2 and two["steps"] == one["steps"]

    def losses(run):
        lines = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [x["loss"] for x in lines if x["type"] == "train"]

    assert losses("two") == pytest.approx(losses("one"), abs=1e-5)
    assert (two["eval"]["samples"], two["eval"]["windows"]) == (one["eval"]["samples"], one["eval"]["windows"])
    assert two["eval"]["accuracy"] == one["eval"]["accuracy"] and two["eval"]["f1"] == one["eval"]["f1"]
    assert two["eval"]["loss"] == pytest.approx(one["eval"]["loss"], abs=1e-6)

    # Evaluation order: windows longest first, 2 x 4 a micro batch; process k takes rows 4k..4k+3.
    validation = prepare(load_config(one_cfg)).split("validation")
    order = SortedSampler(validation["length"]).indices
    process = (np.arange(len(order)) % 8) // 4
    documents = np.asarray(validation["document"])[order]
    split = [d for d in set(documents.tolist()) if len(set(process[documents == d].tolist())) == 2]
    assert len(split) >= 10  # documents with windows on both processes

    # the final model's report (train evaluates it as `ftcli eval` does): the same per-class table
    reports = [json.loads((tmp_path / run / "eval" / "validation" / "eval_report.json").read_text())
               for run in ("one", "two")]
    assert reports[1]["per_class"] == reports[0]["per_class"]
    assert reports[1]["confusion_matrix"] == reports[0]["confusion_matrix"]
    assert sum(map(sum, reports[0]["confusion_matrix"])) == 60

    source = long_files["validation"]
    args = ("predict", "-c", str(one_cfg), "--model", str(tmp_path / "one" / "model"), "--input", str(source))
    single = run_here(*args, "--output", str(tmp_path / "p1.jsonl"))
    assert single.returncode == 0, single.stderr[-2000:]
    double = accelerate_launch(*args, "--output", str(tmp_path / "p2.jsonl"))
    assert double.returncode == 0, double.stderr[-3000:]
    p1 = [json.loads(x) for x in (tmp_path / "p1.jsonl").read_text().splitlines()]
    p2 = [json.loads(x) for x in (tmp_path / "p2.jsonl").read_text().splitlines()]
    assert [r["row"] for r in p2] == list(range(60)) and [r["label"] for r in p2] == [r["label"] for r in p1]
    assert [r["windows"] for r in p2] == [r["windows"] for r in p1]
    for a, b in zip(p1, p2):
        assert list(b["probabilities"].values()) == pytest.approx(list(a["probabilities"].values()), abs=1e-6)


@pytest.mark.slow
def test_a_run_on_windows_killed_and_resumed_is_bit_identical(tiny_model, long_files, tmp_path):
    import signal

    import torch
    from safetensors.torch import load_file

    from conftest import run_cli

    sets = ("--set", "train.checkpoint_every=20", "--set", "train.log_every=1")
    reference = long_config(tmp_path, tiny_model, long_files, "reference", epochs=1)
    cli_json("train", "-c", str(reference), *sets)
    cfg = long_config(tmp_path, tiny_model, long_files, "killed", epochs=1)
    killed = run_cli("train", "-c", str(cfg), *sets, env={"FTCLI_FAULT": "step:53"})  # mid-epoch
    assert killed.returncode == -signal.SIGKILL
    assert cli_json("train", "-c", str(cfg), *sets, "--resume", "auto")["resumed_from"].endswith("step-0000040")
    a = load_file(tmp_path / "reference" / "model" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "model" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def log(run: str) -> list:
        lines = [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [(x["step"], x["loss"]) for x in lines if x["type"] == "train"]

    assert log("killed") == log("reference")


def test_multi_label_pairs_are_windowed_on_their_second_text_and_pooled_as_probabilities(tiny_model, tmp_path):
    """A title (kept whole) and a long body (windowed); label sets. predict's probabilities are
    the mean over a document's windows of each label's sigmoid, computed here by hand."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rng = random.Random(5)

    def rows(n: int) -> list[dict]:
        out = []
        for r in long_rows(n, seed=rng.randrange(1000), early=0.3):
            tags = [t for t in ("x", "y") if rng.random() < 0.5]
            out.append({"title": " ".join(rng.choice(FILLER) for _ in range(3)), "body": r["text"], "tags": tags})
        return out

    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows(48)),
             "validation": write_jsonl(tmp_path / "validation.jsonl", rows(20))}
    cfg = long_config(tmp_path, tiny_model, files, "multi", data={"text_columns": ["title", "body"],
                      "label_column": "tags", "allow_empty_labels": True}, epochs=1)
    text = yaml.safe_load(cfg.read_text())
    text["model"] = {"name_or_path": str(tiny_model), "problem_type": "multi_label", "labels": ["x", "y"]}
    cfg.write_text(yaml.safe_dump(text))
    trained = cli_json("train", "-c", str(cfg))
    assert trained["metric"] == "multilabel" and trained["eval"]["samples"] == 20 and trained["eval"]["windows"] > 40
    source = files["validation"]
    out = cli_json("predict", "-c", str(cfg), "--input", str(source), "--output", str(tmp_path / "p.jsonl"))
    written = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    assert out["rows"] == 20 and [w["row"] for w in written] == list(range(20))

    docs = [json.loads(x) for x in source.read_text().splitlines()]
    folder = tmp_path / "multi" / "model"
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForSequenceClassification.from_pretrained(folder).eval()
    enc = tok([d["title"] for d in docs], [d["body"] for d in docs], truncation="only_second", max_length=MAX_LENGTH,
              stride=STRIDE, return_overflowing_tokens=True)
    of = np.asarray(enc["overflow_to_sample_mapping"])
    assert [w["windows"] for w in written] == np.bincount(of).tolist()
    for d, w in enumerate(written):
        picked = np.flatnonzero(of == d)
        with torch.no_grad():
            probs = torch.cat([torch.sigmoid(model(input_ids=torch.tensor([enc["input_ids"][i]]),
                                                   token_type_ids=torch.tensor([enc["token_type_ids"][i]])).logits)
                               for i in picked]).mean(0)
        assert [w["probabilities"]["x"], w["probabilities"]["y"]] == pytest.approx(probs.tolist(), abs=2e-6)
        assert w["labels"] == [name for name, p in zip(("x", "y"), probs.tolist()) if p >= 0.5]


def test_regression_documents_pool_their_windows_values(tiny_model, long_files, tmp_path):
    """num_labels 1: a document's prediction is the largest of its windows' values (max pooling),
    computed here by hand; eval's loss is the squared error per document."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    rows = [{"text": r["text"], "label": float(len(r["text"].split()) / 100)} for r in long_rows(40, seed=6, early=0.5)]
    files = {"train": write_jsonl(tmp_path / "train.jsonl", rows[:30]),
             "validation": write_jsonl(tmp_path / "validation.jsonl", rows[30:])}
    cfg = long_config(tmp_path, tiny_model, files, "regression", epochs=1)
    text = yaml.safe_load(cfg.read_text())
    text["model"] = {"name_or_path": str(tiny_model), "num_labels": 1}
    text["eval"] = {"window_pooling": "max"}
    cfg.write_text(yaml.safe_dump(text))
    cli_json("train", "-c", str(cfg))
    cli_json("predict", "-c", str(cfg), "--input", str(files["validation"]), "--output", str(tmp_path / "p.jsonl"))
    written = [json.loads(x) for x in (tmp_path / "p.jsonl").read_text().splitlines()]
    folder = tmp_path / "regression" / "model"
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForSequenceClassification.from_pretrained(folder).eval()
    enc = tok([r["text"] for r in rows[30:]], truncation=True, max_length=MAX_LENGTH, stride=STRIDE,
              return_overflowing_tokens=True)
    of = np.asarray(enc["overflow_to_sample_mapping"])
    with torch.no_grad():
        values = [max(float(model(input_ids=torch.tensor([enc["input_ids"][i]])).logits) for i in np.flatnonzero(of == d))
                  for d in range(10)]
    assert [w["prediction"] for w in written] == pytest.approx(values, abs=1e-5)
    assert [w["windows"] for w in written] == np.bincount(of).tolist()
    evaluated = cli_json("eval", "-c", str(cfg))
    truth = [r["label"] for r in rows[30:]]
    assert evaluated["samples"] == 10
    assert evaluated["loss"] == pytest.approx(np.mean((np.array(values) - truth) ** 2), rel=1e-4)
