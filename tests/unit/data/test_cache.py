"""The prepared-data cache: local formats, columns, labels, the fingerprint, hits and misses."""

from __future__ import annotations

import json
import shutil

import pytest

from conftest import config_dict, make_rows, write_jsonl
from ftcli.data import cache, reading
from ftcli.config import config_from_dict
from ftcli.errors import FtcliError


@pytest.fixture
def files(tmp_path):
    return {
        "train": write_jsonl(tmp_path / "d" / "train.jsonl", make_rows(24, seed=1)),
        "validation": write_jsonl(tmp_path / "d" / "validation.jsonl", make_rows(10, seed=2)),
    }


def cfg_for(tiny_model, files, tmp_path, overrides=(), **model):
    raw = config_dict(tiny_model, files, tmp_path)
    raw["model"].update(model)
    return config_from_dict(raw, list(overrides))


def prep(cfg, logs=None):
    return cache.prepare(cfg, log=(logs.append if logs is not None else lambda *_: None))


def error_of(fn, *args, **kwargs) -> str:
    with pytest.raises(FtcliError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_prepare_writes_a_loadable_dataset_and_manifest(tiny_model, files, tmp_path):
    p = prep(cfg_for(tiny_model, files, tmp_path))
    assert not p.hit and p.why_missed == "first build"
    manifest = json.loads((p.path / "manifest.json").read_text())
    assert manifest == p.manifest.to_json()
    assert manifest["label_names"] == ["no", "yes"]
    assert manifest["parts"]["settings"]["max_length"] == 48
    assert set(manifest["parts"]["data"]["files"]) == {"train", "validation"}
    assert manifest["splits"]["train"]["rows"] == 24 and manifest["splits"]["train"]["labeled"]
    ds = p.split("train")
    assert set(ds.column_names) == {"input_ids", "attention_mask", "token_type_ids", "length", "truncated", "labels"}
    rows = make_rows(24, seed=1)
    assert ds["labels"] == [r["label"] for r in rows]
    assert ds["length"] == [len(x) for x in ds["input_ids"]]
    assert max(ds["length"]) <= 48
    # Every file of the dataset is checksummed in the manifest.
    on_disk = {str(f.relative_to(p.path)) for f in (p.path / "dataset").rglob("*") if f.is_file()}
    assert on_disk == set(manifest["checksums"])
    assert not list(p.path.parent.glob(".tmp-*"))


def test_second_prepare_is_a_hit(tiny_model, files, tmp_path):
    cfg = cfg_for(tiny_model, files, tmp_path)
    first, second = prep(cfg), prep(cfg)
    assert second.hit and second.path == first.path and second.manifest == first.manifest


@pytest.mark.parametrize("change, expected", [
    (["data.max_length=32"], "changed: max_length"),
    (["data.text_columns=[sentence2, sentence1]"], "changed: text_columns"),
    (["model.labels=['yes', 'no']"], "changed: labels"),
])
def test_each_setting_is_part_of_the_key(tiny_model, files, tmp_path, change, expected):
    first = prep(cfg_for(tiny_model, files, tmp_path))
    other = prep(cfg_for(tiny_model, files, tmp_path, change))
    assert not other.hit and other.path != first.path and other.why_missed == expected


def test_label_column_is_part_of_the_key(tiny_model, tmp_path):
    rows = [{**r, "target": r["label"]} for r in make_rows(24, seed=1)]
    files = {"train": write_jsonl(tmp_path / "t.jsonl", rows)}
    first = prep(cfg_for(tiny_model, files, tmp_path))
    other = prep(cfg_for(tiny_model, files, tmp_path, ["data.label_column=target"]))
    assert not other.hit and other.why_missed == "changed: label_column"
    assert other.split("train")["labels"] == first.split("train")["labels"]


def test_other_data_in_a_shared_cache_is_a_first_build(tiny_model, files, tmp_path):
    """A cache folder shared by two datasets: the second one's build is its first, not a change
    of the first one's data and settings."""
    prep(cfg_for(tiny_model, files, tmp_path))
    other = {split: write_jsonl(tmp_path / f"other-{split}.jsonl", make_rows(12, seed=5 + i))
             for i, split in enumerate(files)}
    raw = cfg_for(tiny_model, other, tmp_path).to_dict()
    raw["data"]["max_length"] = 24
    assert prep(config_from_dict(raw)).why_missed == "first build"


def test_a_changed_data_file_is_a_miss(tiny_model, files, tmp_path):
    cfg = cfg_for(tiny_model, files, tmp_path)
    first = prep(cfg)
    write_jsonl(files["validation"], make_rows(10, seed=99))
    other = prep(cfg)
    assert not other.hit and other.why_missed == "changed: data" and other.path != first.path


def test_a_changed_tokenizer_is_a_miss(tiny_model, files, tmp_path):
    model = tmp_path / "model-copy"
    shutil.copytree(tiny_model, model)
    cfg = cfg_for(tiny_model, files, tmp_path, name_or_path=str(model))
    first = prep(cfg)
    tok = json.loads((model / "tokenizer.json").read_text())
    tok["normalizer"]["lowercase"] = False
    (model / "tokenizer.json").write_text(json.dumps(tok))
    other = prep(cfg)
    assert not other.hit and other.why_missed == "changed: tokenizer"


def test_a_corrupt_cache_is_detected_and_rebuilt(tiny_model, files, tmp_path):
    cfg = cfg_for(tiny_model, files, tmp_path)
    first = prep(cfg)
    arrow = first.path / "dataset" / "train.arrow"
    blob = bytearray(arrow.read_bytes())
    blob[-100] ^= 0xFF
    arrow.write_bytes(bytes(blob))
    assert "does not match its checksum" in cache.verify_cache(first.path)
    logs = []
    again = prep(cfg, logs)
    assert not again.hit and again.why_missed == "the cached copy was damaged"
    assert any("is damaged" in line for line in logs)
    assert cache.verify_cache(again.path) is None and again.path == first.path


def test_a_truncated_manifest_is_a_miss(tiny_model, files, tmp_path):
    cfg = cfg_for(tiny_model, files, tmp_path)
    first = prep(cfg)
    (first.path / "manifest.json").write_text("{")
    assert cache.verify_cache(first.path) == "manifest.json is unreadable"
    assert not prep(cfg).hit and prep(cfg).hit


@pytest.mark.parametrize("fmt", ["csv", "tsv", "json", "parquet"])
def test_local_formats(tiny_model, tmp_path, fmt):
    import pandas as pd

    frame = pd.DataFrame(make_rows(12, seed=5))
    path = tmp_path / f"train.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif fmt == "json":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    p = prep(cfg_for(tiny_model, {"train": path}, tmp_path))
    assert p.split("train").num_rows == 12
    assert p.split("train")["labels"] == frame["label"].tolist()


def test_single_text_column_and_string_labels(tiny_model, tmp_path):
    rows = [{"text": r["sentence1"], "sentiment": "pos" if r["label"] else "neg"} for r in make_rows(12, seed=3)]
    files = {"train": write_jsonl(tmp_path / "t.jsonl", rows)}
    raw = config_dict(tiny_model, files, tmp_path)
    raw["model"].pop("labels")
    raw["data"].update(text_columns=["text"], label_column="sentiment")
    p = prep(config_from_dict(raw))
    assert p.label_names == ["neg", "pos"]  # inferred: sorted distinct values
    assert p.split("train")["labels"] == [int(r["sentiment"] == "pos") for r in rows]
    assert "token_type_ids" in p.split("train").column_names


def test_missing_columns_are_named_with_the_file(tiny_model, files, tmp_path):
    msg = error_of(prep, cfg_for(tiny_model, files, tmp_path, ["data.text_columns=[sentence1, question]"]))
    assert f"{files['train']}: column 'question' not found (columns: sentence1, sentence2, label, idx); fix data.text_columns" in msg
    msg = error_of(prep, cfg_for(tiny_model, files, tmp_path, ["data.label_column=gold"]))
    assert "column 'gold' not found" in msg and "fix data.label_column" in msg


def test_missing_data_file(tiny_model, files, tmp_path):
    files = {**files, "test": tmp_path / "nope.jsonl"}
    msg = error_of(prep, cfg_for(tiny_model, files, tmp_path))
    assert msg.startswith("data.files.test: file") and "nope.jsonl' not found" in msg


@pytest.mark.parametrize("bad_row, expected", [
    ({"label": 7}, "row 3: label 7 is not a label id 0..1 (labels: ['no', 'yes']); fix the row or model.labels"),
    ({"label": "maybe"}, "row 3: label 'maybe' is not one of the labels ['no', 'yes']"),
    ({"label": None}, "row 3: label is missing while other rows have one"),
    ({"sentence2": None}, "row 3: column 'sentence2' is empty"),
])
def test_bad_rows_are_named(tiny_model, tmp_path, bad_row, expected):
    rows = make_rows(8, seed=1)
    if isinstance(bad_row.get("label"), str):
        rows = [{**r, "label": ["no", "yes"][r["label"]]} for r in rows]
    rows[2] = {**rows[2], **bad_row}
    files = {"train": write_jsonl(tmp_path / "t.jsonl", rows)}
    cfg = cfg_for(tiny_model, files, tmp_path)
    msg = error_of(prep, cfg)
    assert msg.startswith(str(files["train"])) and expected in msg
    # Nothing half-written: no cache folder, no temporary folder.
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.startswith(("file-hashes", "."))] == []
    assert not list((tmp_path / "cache").glob(".tmp-*"))


def test_empty_split_is_refused(tiny_model, files, tmp_path):
    files = {**files, "validation": tmp_path / "empty.csv"}
    (tmp_path / "empty.csv").write_text("sentence1,sentence2,label\n")
    assert "split 'validation' has no rows" in error_of(prep, cfg_for(tiny_model, files, tmp_path))


def test_unlabelled_split_is_kept_for_prediction(tiny_model, files, tmp_path):
    files = {**files, "test": write_jsonl(tmp_path / "test.jsonl", make_rows(5, seed=3, labelled=False))}
    p = prep(cfg_for(tiny_model, files, tmp_path))
    assert p.split_info("test").labeled is False and p.split("test")["labels"] == [-1] * 5


def test_unknown_split_is_named(tiny_model, files, tmp_path):
    p = prep(cfg_for(tiny_model, files, tmp_path))
    assert "split 'test' is not in the data (available: train, validation)" in error_of(p.split_info, "test")


def test_model_folder_missing(files, tmp_path, tiny_model):
    cfg = cfg_for(tiny_model, files, tmp_path, name_or_path=str(tmp_path / "no-model"))
    assert "folder" in error_of(prep, cfg) and "no-model" in error_of(prep, cfg)


def test_hub_dataset_through_the_seams(tiny_model, tmp_path, monkeypatch):
    """The Hub path (glue/mrpc style, ClassLabel names) with the download swapped for local data."""
    import datasets

    features = datasets.Features({
        "sentence1": datasets.Value("string"), "sentence2": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["not_equivalent", "equivalent"]), "idx": datasets.Value("int32"),
    })
    hub = datasets.DatasetDict({
        "train": datasets.Dataset.from_list(make_rows(16, seed=1), features=features),
        "validation": datasets.Dataset.from_list(make_rows(8, seed=2), features=features),
    })
    calls = []
    monkeypatch.setattr(reading, "load_hub_dataset", lambda *a: calls.append(a) or hub)
    monkeypatch.setattr(cache, "hub_dataset_revision", lambda d: "a" * 40)
    raw = config_dict(tiny_model, {}, tmp_path)
    raw["model"].pop("labels")
    raw["data"].pop("files")
    raw["data"].update(path="glue", name="mrpc")
    p = prep(config_from_dict(raw))
    assert calls == [("glue", "mrpc", None)]
    assert p.label_names == ["not_equivalent", "equivalent"]
    assert p.manifest.parts["data"] == {"hub": {"path": "glue", "name": "mrpc", "revision": "a" * 40}}
    assert prep(config_from_dict(raw)).hit and len(calls) == 1  # a hit loads nothing
    monkeypatch.setattr(cache, "hub_dataset_revision", lambda d: "b" * 40)
    assert prep(config_from_dict(raw)).why_missed == "changed: data"


# ---------------------------------------------------------------------------------------------
# Batching


def test_disk_full_during_prepare_says_so_and_leaves_no_partial_build(tiny_model, tmp_path, small_disk):
    import yaml

    from conftest import config_dict, make_rows, run_here, write_jsonl

    mount, fill = small_disk
    files = {"train": write_jsonl(tmp_path / "train.jsonl", make_rows(3000, seed=8))}
    cfg = config_dict(tiny_model, files, tmp_path)
    cfg["data"]["cache_dir"] = str(mount / "cache")
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    fill(16 * 1024)
    result = run_here("prepare", "-c", str(tmp_path / "c.yaml"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"error: no space left on the disk holding data.cache_dir '{mount / 'cache'}': free some space, or set "
        "data.cache_dir to a folder on another disk"], result.stderr
    assert not list((mount / "cache").glob(".tmp-*"))
