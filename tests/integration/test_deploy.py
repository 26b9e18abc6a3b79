"""From a trained run to a deployed classifier: `ftcli export` (ONNX, parity, int8), `predict` and
`eval --backend onnx`, `ftcli calibrate` (temperature, thresholds), the model card with
`transformers.pipeline`, and `ftcli push` (what would be uploaded; offline in one line)."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import yaml

from conftest import WORDS, config_dict, make_rows, run_here, write_jsonl

pytestmark = pytest.mark.slow


def _write(cfg: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _ok(result):
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def trained(tiny_model, task_files, tmp_path_factory):
    """A tiny BERT trained on the pair task (learned: accuracy well above chance), left as train
    wrote it: tests that change its model work on copies."""
    work = tmp_path_factory.mktemp("deploy")
    config = _write(config_dict(tiny_model, task_files, work, epochs=6), work / "c.yaml")
    _ok(run_here("train", "-c", str(config), "-q"))
    return config, work / "run"


@pytest.fixture(scope="module")
def exported(trained):
    config, run = trained
    summary = json.loads(_ok(run_here("export", str(run), "--json", "-q")).stdout)
    return config, run, summary


def test_export_passes_parity_and_carries_what_predict_needs(exported):
    _, run, summary = exported
    out = run / "onnx"
    assert summary["output"] == str(out)
    assert summary["parity"]["max_abs_diff"] <= 1e-4 and summary["parity"]["rows"] == 40
    assert summary["inputs"] == ["input_ids", "attention_mask", "token_type_ids"]
    assert {"model.onnx", "export.json", "config.json", "tokenizer.json", "tokenizer_config.json"} <= \
        {p.name for p in out.iterdir()}
    assert not list(out.glob("*.safetensors"))
    info = json.loads((out / "export.json").read_text())
    assert info["labels"] == ["no", "yes"] and info["quantize"] is None and info["temperature"] == 1.0
    assert info["parity"]["metrics_pytorch"]["accuracy"] == info["parity"]["metrics_onnx"]["accuracy"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in session.get_outputs()] == ["logits"]
    assert [i.shape for i in session.get_inputs()][0][0] != 40  # batch and sequence stay dynamic
    assert not (run.parent / "run" / ".onnx.tmp").exists()
    assert "An ONNX export checked against PyTorch on validation" in (run / "model" / "README.md").read_text()


def test_predict_and_eval_with_onnx_equal_pytorch_in_input_order(exported, task_files, tmp_path):
    config, run, _ = exported
    rows = make_rows(30, seed=9, labelled=False)
    random.Random(0).shuffle(rows)
    source = write_jsonl(tmp_path / "rows.jsonl", rows)
    torch_out, onnx_out = tmp_path / "torch.jsonl", tmp_path / "onnx.jsonl"
    _ok(run_here("predict", "-c", str(config), "-i", str(source), "-o", str(torch_out), "-k", "idx", "-q"))
    summary = json.loads(_ok(run_here("predict", "-c", str(config), "-i", str(source), "-o", str(onnx_out), "-k",
                                      "idx", "--backend", "onnx", "--json", "-q")).stdout)
    assert summary["backend"] == "onnx" and summary["model"] == str(run / "onnx")
    a, b = _read_jsonl(torch_out), _read_jsonl(onnx_out)
    assert [r["idx"] for r in b] == [r["idx"] for r in rows]  # input order
    assert [r["label"] for r in a] == [r["label"] for r in b]
    for x, y in zip(a, b):
        assert x["probabilities"] == pytest.approx(y["probabilities"], abs=1e-5)
    plain = json.loads(_ok(run_here("eval", "-c", str(config), "--json", "-q")).stdout)
    onnx = json.loads(_ok(run_here("eval", "-c", str(config), "--backend", "onnx", "--json", "-q")).stdout)
    assert (onnx["accuracy"], onnx["f1"], onnx["per_class"]) == (plain["accuracy"], plain["f1"], plain["per_class"])
    assert onnx["loss"] == pytest.approx(plain["loss"], abs=1e-5)
    assert Path(onnx["report"]) == run / "eval" / "validation-onnx" / "eval_report.json"


def test_int8_export_reports_the_metric_change_next_to_the_speed_up(trained, tmp_path):
    config, run = trained
    out = tmp_path / "int8"
    summary = json.loads(_ok(run_here("export", str(run), "--quantize", "int8", "-o", str(out), "--json",
                                      "-q")).stdout)
    q = summary["int8"]
    assert set(q["change"]) >= {"accuracy", "f1"}
    assert q["change"]["accuracy"] == pytest.approx(q["metrics_int8"]["accuracy"] - q["metrics_pytorch"]["accuracy"])
    assert q["speedup_vs_pytorch"] > 0 and q["seconds_int8"] > 0
    assert json.loads((out / "export.json").read_text())["quantize"] == "int8"
    import onnx

    graph = onnx.load(str(out / "model.onnx"))
    assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeLinear") for n in graph.graph.node)
    predicted = tmp_path / "p.jsonl"
    _ok(run_here("predict", "-c", str(config), "-i", str(_test_file(config)), "-o", str(predicted), "--backend", "onnx",
                 "--model", str(out), "-q"))
    assert len(_read_jsonl(predicted)) == 7


def _test_file(config: Path) -> Path:
    return Path(yaml.safe_load(config.read_text())["data"]["files"]["test"])


def test_a_broken_export_fails_the_parity_check_and_keeps_nothing(exported, monkeypatch, tmp_path):
    """The exporter "mistranslates": the graph it writes has one weight changed. The check
    finds it, exit 3 with the figure, and neither the export folder nor a temporary is left."""
    _, run, _ = exported
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from ftcli.deploy import onnx_export

    good = onnx.load(str(run / "onnx" / "model.onnx"))

    def broken(model, temperature, sample, path, max_length):
        graph = onnx.ModelProto()
        graph.CopyFrom(good)
        init = max((i for i in graph.graph.initializer if len(i.dims) == 2), key=lambda i: np.prod(i.dims))
        array = numpy_helper.to_array(init) * 1.5
        init.CopyFrom(numpy_helper.from_array(array.astype(np.float32), init.name))
        onnx.save(graph, str(path))
        return 18

    monkeypatch.setattr(onnx_export, "_export_graph", broken)
    out = tmp_path / "broken"
    result = run_here("export", str(run), "-o", str(out))
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len([l for l in lines if l.startswith("error:")]) == 1
    assert "logits differ from PyTorch's by up to" in result.stderr and "1e-04 tolerance" in result.stderr
    assert not out.exists() and not (tmp_path / ".broken.tmp").exists()


def test_bad_export_and_backend_requests_are_one_line(trained, make_config, tmp_path):
    config, trained_run = trained
    run = tmp_path / "copy"  # the trained run without an export
    shutil.copytree(trained_run / "model", run / "model")
    shutil.copy2(trained_run / "config.yaml", run / "config.yaml")
    fresh = make_config()
    empty = tmp_path / "empty-run"
    empty.mkdir()
    cases = [
        (["export", str(empty)], "holds no trained model"),
        (["export", str(tmp_path / "missing")], "does not exist"),
        (["export", str(run), "--quantize", "fp16"], "--quantize 'fp16': unsupported; use int8"),
        (["export", str(run), "--format", "tflite"], "--format 'tflite': ftcli exports onnx"),
        (["predict", "-c", str(fresh), "-i", str(_test_file(config)), "--backend", "onnx", "--model",
          str(run / "model")], "no ONNX export"),
        (["eval", "-c", str(fresh), "--backend", "onnx"], "no ONNX export"),
        (["predict", "-c", str(config), "-i", str(_test_file(config)), "--backend", "tensorrt"],
         "--backend 'tensorrt': use torch or onnx"),
    ]
    for args, expected in cases:
        result = run_here(*args)
        assert result.returncode == 2, (args, result.stderr)
        lines = [l for l in result.stderr.strip().splitlines() if l.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], (args, lines)


def _scaled_copy(model: Path, into: Path, scale: float = 1.0, bias_shift: dict[int, float] | None = None) -> Path:
    """A copy of a trained model folder whose head is made over-confident (`scale` multiplies
    its weights) or biased against some labels (`bias_shift`)."""
    import torch
    from transformers import AutoModelForSequenceClassification

    shutil.copytree(model, into)
    for name in ("thresholds.json", "calibration.json"):
        (into / name).unlink(missing_ok=True)
    m = AutoModelForSequenceClassification.from_pretrained(into)
    with torch.no_grad():
        m.classifier.weight.mul_(scale)
        m.classifier.bias.mul_(scale)
        for k, v in (bias_shift or {}).items():
            m.classifier.bias[k] += v
    m.save_pretrained(into)
    return into


def test_temperature_scaling_lowers_ece_and_predict_applies_the_saved_temperature(trained, tiny_classifier,
                                                                                   tmp_path):
    """An untrained head (right half the time) made sure of itself: temperature scaling must
    bring its probabilities back towards 0.5."""
    config, _ = trained
    folder = _scaled_copy(tiny_classifier, tmp_path / "overconfident", scale=40.0)
    result = json.loads(_ok(run_here("calibrate", "-c", str(config), "--model", str(folder), "--no-thresholds",
                                     "--json", "-q")).stdout)
    assert result["temperature"] > 2 and result["ece_after"] < result["ece_before"] / 2
    assert result["thresholds"] is None and result["after"] == result["before"]  # argmax is unchanged by T
    saved = json.loads((folder / "calibration.json").read_text())
    assert saved["temperature"] == result["temperature"] and saved["split"] == "validation"
    assert (folder / "reliability_diagram.png").stat().st_size > 1000
    # predict divides the logits by the saved temperature
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "p.jsonl"
    summary = json.loads(_ok(run_here("predict", "-c", str(config), "--model", str(folder), "-i",
                                      str(_test_file(config)), "-o", str(out), "--json", "-q")).stdout)
    assert summary["temperature"] == result["temperature"]
    rows = [json.loads(line) for line in _test_file(config).read_text().splitlines()]
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForSequenceClassification.from_pretrained(folder)
    enc = tok([r["sentence1"] for r in rows], [r["sentence2"] for r in rows], padding=True, truncation=True,
              max_length=48, return_tensors="pt")
    with torch.no_grad():
        expected = torch.softmax(model.eval()(**enc).logits / result["temperature"], -1)
    got = [[r["probabilities"]["no"], r["probabilities"]["yes"]] for r in _read_jsonl(out)]
    assert sum(got, []) == pytest.approx(expected.flatten().tolist(), abs=1e-5)
    card = (folder / "README.md").read_text()
    assert f"T = {result['temperature']:.4f}" in card and "reliability_diagram.png" in card
    # thresholds alone afterwards: the saved temperature stays, and they are tuned for it
    kept = json.loads(_ok(run_here("calibrate", "-c", str(config), "--model", str(folder), "--no-temperature",
                                   "--json", "-q")).stdout)
    assert kept["temperature"] == result["temperature"] and kept["ece_before"] is None
    assert json.loads((folder / "thresholds.json").read_text())["temperature"] == result["temperature"]
    assert json.loads((folder / "calibration.json").read_text())["temperature"] == result["temperature"]


def test_a_binary_threshold_is_tuned_saved_and_applied(trained, tmp_path):
    """The trained model with its "yes" logit pushed down: at the most probable label it misses
    most positives; the threshold chosen for F1 on validation gets them back."""
    config, run = trained
    folder = _scaled_copy(run / "model", tmp_path / "shy", bias_shift={1: -3.0})
    result = json.loads(_ok(run_here("calibrate", "-c", str(config), "--model", str(folder), "--no-temperature",
                                     "--metric", "f1", "--json", "-q")).stdout)
    # RUN_DIR alone: the run's saved config (here the model folder given as RUN_DIR's model)
    shutil.copy2(run / "config.yaml", tmp_path / "config.yaml")
    again = json.loads(_ok(run_here("calibrate", str(folder), "--no-temperature", "--json", "-q")).stdout)
    assert again["thresholds"]["threshold"] == result["thresholds"]["threshold"]
    t = result["thresholds"]
    assert t["kind"] == "binary" and t["positive_label"] == "yes" and t["threshold"] < 0.5
    assert result["after"]["f1"] > result["before"]["f1"] + 0.2
    saved = json.loads((folder / "thresholds.json").read_text())
    assert saved["threshold"] == t["threshold"] and saved["after"]["f1"] == result["after"]["f1"]
    evaluated = json.loads(_ok(run_here("eval", "-c", str(config), "--model", str(folder), "--json", "-q")).stdout)
    assert evaluated["threshold"] == t["threshold"] and evaluated["threshold_source"].startswith("saved")
    assert evaluated["f1"] == pytest.approx(result["after"]["f1"], abs=1e-6)
    at_half = json.loads(_ok(run_here("eval", "-c", str(config), "--model", str(folder), "--json", "-q",
                                      "--set", "eval.threshold=0.5")).stdout)
    assert at_half["f1"] == pytest.approx(result["before"]["f1"], abs=1e-6)
    out = tmp_path / "p.jsonl"
    _ok(run_here("predict", "-c", str(config), "--model", str(folder), "-i", str(_test_file(config)), "-o", str(out),
                 "-q"))
    for r in _read_jsonl(out):
        assert r["label"] == ("yes" if r["probabilities"]["yes"] >= t["threshold"] else "no")


def test_the_model_card_and_pipeline_agree_with_predict(trained, tmp_path):
    config, run = trained
    from huggingface_hub import ModelCard

    card = ModelCard.load(run / "model" / "README.md")
    assert card.data.library_name == "transformers" and card.data.pipeline_tag == "text-classification"
    metrics = json.loads((run / "metrics.json").read_text())
    results = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert results["accuracy"] == pytest.approx(metrics["eval"]["accuracy"], abs=1e-6)
    assert {r.dataset_split for r in card.data.eval_results} == {"validation"}
    text = card.text
    assert metrics["data"]["key"] in text  # the data fingerprint
    assert "![confusion matrix](confusion_matrix.png)" in text and (run / "model" / "confusion_matrix.png").is_file()
    for section in ("## Intended use", "## Evaluation", "## Calibration", "## Thresholds", "## Training"):
        assert section in text
    assert "| no |" in text and "| yes |" in text  # the per-class table
    assert yaml.safe_load(text.split("```yaml\n", 1)[1].split("```", 1)[0])["train"]["epochs"] == 6

    from transformers import pipeline

    rows = [json.loads(line) for line in _test_file(config).read_text().splitlines()]
    classify = pipeline("text-classification", model=str(run / "model"), top_k=None)
    answers = classify([{"text": r["sentence1"], "text_pair": r["sentence2"]} for r in rows])
    out = tmp_path / "p.jsonl"
    _ok(run_here("predict", "-c", str(config), "-i", str(_test_file(config)), "-o", str(out), "-q"))
    for ours, theirs in zip(_read_jsonl(out), answers):
        best = max(theirs, key=lambda a: a["score"])
        assert ours["label"] == best["label"]
        assert ours["probabilities"] == pytest.approx({a["label"]: a["score"] for a in theirs}, abs=1e-5)


def test_push_lists_what_it_would_upload_and_fails_offline_in_one_line(exported, monkeypatch):
    _, run, _ = exported
    plan = json.loads(_ok(run_here("push", str(run), "--repo-id", "someone/tiny", "--dry-run", "--json")).stdout)
    names = {f["path_in_repo"] for f in plan["files"]}
    assert {"README.md", "config.json", "model.safetensors", "tokenizer.json", "confusion_matrix.png",
            "onnx/model.onnx", "onnx/export.json", "onnx/tokenizer.json"} <= names
    assert not any(n.startswith(("checkpoints", "eval/", "metrics")) or "/eval/" in n for n in names)
    offline = run_here("push", str(run), "--repo-id", "someone/tiny")
    assert offline.returncode == 2 and offline.stderr.count("\n") == 1 and "HF_HUB_OFFLINE" in offline.stderr
    assert run_here("push", str(run), "--repo-id", "not a repo").returncode == 2
    # with the Hub "on" but out of reach: one line naming the endpoint
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    unreachable = run_here("push", str(run), "--repo-id", "someone/tiny")
    assert unreachable.returncode == 2 and unreachable.stderr.count("\n") == 1
    assert "push: the upload to http://127.0.0.1:9 failed" in unreachable.stderr
    # what is uploaded is the plan, in one commit
    from huggingface_hub import HfApi

    sent = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: f"https://hub/{repo_id}")
    monkeypatch.setattr(HfApi, "create_commit", lambda self, repo_id, operations, **kw: sent.update(
        ops=[o.path_in_repo for o in operations], kw=kw) or "https://hub/commit/1")
    _ok(run_here("push", str(run), "--repo-id", "someone/tiny"))
    assert sorted(sent["ops"]) == sorted(names)


def tag_rows(n: int, seed: int) -> list[dict]:
    """Multi-label: red, blue and green in the text tag a row with a, b and c."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        tags = [t for t in range(3) if rng.random() < 0.4] or [rng.randrange(3)]
        words = [rng.choice(WORDS[:12]) for _ in range(rng.randint(3, 7))] + [("red", "blue", "green")[t] for t in tags]
        rng.shuffle(words)
        rows.append({"sentence1": " ".join(words), "sentence2": "x", "label": [("a", "b", "c")[t] for t in tags]})
    return rows


def test_multi_label_and_regression_export_with_parity_and_per_label_thresholds(tiny_model, tmp_path):
    ml = {"train": write_jsonl(tmp_path / "ml-train.jsonl", tag_rows(120, 1)),
          "validation": write_jsonl(tmp_path / "ml-val.jsonl", tag_rows(60, 2))}
    raw = config_dict(tiny_model, ml, tmp_path / "ml", epochs=4, batch_size=16)
    raw["model"].pop("labels")
    raw["eval"]["metric"] = "auto"
    raw["calibration"] = {"after_train": True}
    config = _write(raw, tmp_path / "ml.yaml")
    trained = json.loads(_ok(run_here("train", "-c", str(config), "--json", "-q")).stdout)
    calibration = trained["calibration"]
    per_label = calibration["thresholds"]["thresholds"]
    assert calibration["thresholds"]["kind"] == "per_label" and set(per_label) == {"a", "b", "c"}
    assert calibration["after"]["f1_macro"] >= calibration["before"]["f1_macro"]  # 0.5 is one of the choices
    run = tmp_path / "ml" / "run"
    assert json.loads((run / "model" / "thresholds.json").read_text())["thresholds"] == per_label
    evaluated = json.loads(_ok(run_here("eval", "-c", str(config), "--json", "-q")).stdout)
    assert evaluated["threshold"] == per_label and evaluated["temperature"] == calibration["temperature"]
    assert evaluated["f1_macro"] == pytest.approx(calibration["after"]["f1_macro"], abs=1e-6)
    summary = json.loads(_ok(run_here("export", str(run), "--json", "-q")).stdout)
    assert summary["parity"]["max_abs_diff"] <= 1e-4 and summary["temperature"] == calibration["temperature"]
    onnx_eval = json.loads(_ok(run_here("eval", "-c", str(config), "--backend", "onnx", "--json", "-q")).stdout)
    assert onnx_eval["f1_macro"] == evaluated["f1_macro"] and onnx_eval["threshold"] == per_label
    assert onnx_eval["temperature"] == calibration["temperature"]  # applied inside the graph

    rng = random.Random(0)
    reg_rows = [dict(r, label=round(2.0 * ("good" in r["sentence1"].split()[:1]) + rng.random(), 3))
                for r in make_rows(80, seed=4)]
    reg = {"train": write_jsonl(tmp_path / "r-train.jsonl", reg_rows[:60]),
           "validation": write_jsonl(tmp_path / "r-val.jsonl", reg_rows[60:])}
    raw = config_dict(tiny_model, reg, tmp_path / "reg", epochs=1)
    raw["model"].pop("labels")
    raw["model"]["num_labels"] = 1
    raw["eval"]["metric"] = "regression"
    config = _write(raw, tmp_path / "reg.yaml")
    _ok(run_here("train", "-c", str(config), "-q"))
    summary = json.loads(_ok(run_here("export", str(tmp_path / "reg" / "run"), "--json", "-q")).stdout)
    assert summary["parity"]["max_abs_diff"] <= 1e-4 and set(summary["parity"]["metrics_onnx"]) >= {"pearson"}
    refused = run_here("calibrate", "-c", str(config))
    assert refused.returncode == 2 and "regression model has no probabilities" in refused.stderr


def test_a_decoder_without_a_pad_token_exports_and_predicts_alike_on_windows(tmp_path, task_files):
    """GPT-2 as published has no pad token: ftcli gives it one for batching, and the graph pools
    the last real token of each row as PyTorch does. Texts longer than max_length are read in
    windows: the graph scores windows and ftcli pools them per row, for either backend."""
    from families import build

    base = build("gpt2", tmp_path / "gpt2")
    raw = config_dict(base, task_files, tmp_path, epochs=1)
    raw["data"].update(text_columns=["sentence1"], max_length=8, long_texts="windows", stride=2)
    config = _write(raw, tmp_path / "c.yaml")
    _ok(run_here("train", "-c", str(config), "-q"))
    summary = json.loads(_ok(run_here("export", str(tmp_path / "run"), "--json", "-q")).stdout)
    assert summary["parity"]["max_abs_diff"] <= 1e-4 and summary["inputs"] == ["input_ids", "attention_mask"]
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    _ok(run_here("predict", "-c", str(config), "-i", str(task_files["validation"]), "-o", str(a), "-q"))
    _ok(run_here("predict", "-c", str(config), "-i", str(task_files["validation"]), "-o", str(b), "--backend", "onnx",
                 "-q"))
    a, b = _read_jsonl(a), _read_jsonl(b)
    assert len(b) == 40 and [r["row"] for r in b] == list(range(40)) and max(r["windows"] for r in b) > 2
    for x, y in zip(a, b):
        assert x["label"] == y["label"] and x["probabilities"] == pytest.approx(y["probabilities"], abs=1e-5)
        assert x["windows"] == y["windows"]
