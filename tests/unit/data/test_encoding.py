"""ftcli.data.encoding: the streamed, threaded tokenizer gives what `tokenizer(...)` gives, row for row,
in order, whatever the threads and batch size, and reads only the rows it is asked for."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from conftest import WORDS, write_jsonl
from ftcli.data import encoding
from ftcli.config import DataConfig


def texts(n: int, seed: int) -> list[dict]:
    """Pairs from 1 to 40 words: with max_length 16 some fit, some fill it exactly, many are cut."""
    rng = random.Random(seed)
    return [{"a": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))),
             "b": " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40))), "label": i % 3}
            for i in range(n)]


def data_config(truncation: str = "longest_first", **kw) -> DataConfig:
    return DataConfig(files={"train": "t.jsonl"}, text_columns=["a", "b"], label_column="label",
                      truncation=truncation, **kw)


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model)


@pytest.mark.parametrize("truncation", ["longest_first", "only_first", "only_second"])
def test_the_encoder_matches_the_tokenizer_call_and_knows_which_rows_were_cut(tokenizer, truncation):
    rows = texts(300, seed=1)
    a, b = [r["a"] for r in rows], [r["b"] for r in rows]
    if truncation != "longest_first":  # the text that may not be cut must fit on its own
        keep = b if truncation == "only_first" else a
        keep[:] = [" ".join(t.split()[:5]) for t in keep]
    encoder = encoding.Encoder(tokenizer, data_config(truncation), max_length=16)
    assert encoder.backend is not None  # the fast path is what is tested here
    ids, types, cut = encoder.encode([pa.array(a), pa.array(b)])
    expected = tokenizer(a, b, truncation=truncation, max_length=16)
    assert ids == expected["input_ids"] and types == expected["token_type_ids"]
    full = [len(x) for x in tokenizer(a, b)["input_ids"]]
    assert cut == [n > 16 for n in full]
    assert any(cut) and not all(cut) and 16 in full  # cut and uncut rows, and one exactly full
    assert tokenizer.backend_tokenizer.truncation is None  # the caller's tokenizer is left as it was


def test_the_slow_path_gives_the_same_tokens(tokenizer):
    rows = texts(50, seed=2)
    fast = encoding.Encoder(tokenizer, data_config(), max_length=16)
    slow = encoding.Encoder(tokenizer, data_config(), max_length=16)
    slow.backend = None  # as for a tokenizer without a Rust side
    a, b = [r["a"] for r in rows], [r["b"] for r in rows]
    assert fast.encode([pa.array(a), pa.array(b)])[:2] == slow.encode([pa.array(a), pa.array(b)])[:2]


def encode_file(tmp_path, tokenizer, rows, name, *, threads=1, positions=None, truncation="longest_first"):
    import datasets as hfds

    path = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    ds = hfds.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "raw"))
    encoder = encoding.Encoder(tokenizer, data_config(truncation), max_length=16)
    schema = encoding.features(encoder.keep, hfds.Value("int64")).arrow_schema
    labels = ds.data.column("label").combine_chunks()
    out = tmp_path / f"{name}.arrow"
    done = encoding.encode_split(ds, encoder, out, schema, labels, positions=positions, threads=threads,
                                 source=path.name)
    return hfds.Dataset.from_file(str(out)), done


def test_threads_and_batches_keep_rows_in_order_and_positions_pick_rows(tmp_path, tokenizer, monkeypatch):
    rows = texts(257, seed=3)
    one, done = encode_file(tmp_path, tokenizer, rows, "one")
    monkeypatch.setattr(encoding, "BATCH_ROWS", 7)  # 37 batches, 3 threads: order must be kept
    many, _ = encode_file(tmp_path, tokenizer, rows, "many", threads=3)
    assert one.data.table.equals(many.data.table)
    expected = tokenizer([r["a"] for r in rows], [r["b"] for r in rows], truncation=True, max_length=16)
    assert one["input_ids"] == expected["input_ids"]
    assert one["token_type_ids"] == expected["token_type_ids"]
    assert one["attention_mask"] == expected["attention_mask"]
    assert one["length"] == [len(x) for x in expected["input_ids"]]
    assert one["labels"] == [r["label"] for r in rows]
    assert done.rows == 257 and done.tokens == sum(one["length"]) and done.max_tokens == 16
    assert done.truncated == sum(one["truncated"]) > 0

    picked = np.array([0, 5, 6, 100, 255, 256])
    part, done = encode_file(tmp_path, tokenizer, rows, "part", threads=2, positions=picked)
    assert part["input_ids"] == [one["input_ids"][i] for i in picked]
    assert part["labels"] == [rows[i]["label"] for i in picked] and done.rows == len(picked)


def test_a_row_that_cannot_be_cut_is_named_by_its_row(tmp_path, tokenizer, monkeypatch):
    from ftcli.errors import FtcliError

    rows = texts(40, seed=4)
    for r in rows:
        r["b"] = "good bad"
    rows[17]["b"] = " ".join(["good"] * 30)  # only_first may not cut it, and alone it is longer than 16
    monkeypatch.setattr(encoding, "BATCH_ROWS", 8)  # in the third batch, tokenized by a thread
    with pytest.raises(FtcliError, match=r"^bad\.jsonl: row 18: truncation only_first cannot fit it"):
        encode_file(tmp_path, tokenizer, rows, "bad", threads=2, truncation="only_first")


def test_raw_rows_are_read_from_the_file_or_else_the_selection(tmp_path):
    from datasets import load_dataset

    path = write_jsonl(tmp_path / "train.jsonl", texts(30, seed=5))
    ds = load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "raw"))
    assert len(ds.cache_files) == 1
    opened = []
    real_open = pa.OSFile
    with pytest.MonkeyPatch.context() as mp:  # read from the file with plain reads, not the mapped table
        mp.setattr(pa, "OSFile", lambda path, *a: opened.append(path) or real_open(path, *a))
        read = pa.Table.from_batches(list(encoding.raw_batches(ds)))
    assert opened == [ds.cache_files[0]["filename"]]
    assert read.select(ds.column_names).equals(ds.data.table)
    selected = ds.select([2, 1, 0])  # not the file as it is: the selected rows, in their order
    assert pa.Table.from_batches(list(encoding.raw_batches(selected))).to_pylist() == selected.to_list()


@pytest.mark.parametrize("before", [None, "true"])
def test_the_rust_thread_pool_is_off_while_tokenizing_and_as_it_was_after(tmp_path, tokenizer, monkeypatch, before):
    import os

    from ftcli.errors import FtcliError

    if before is None:
        monkeypatch.delenv("TOKENIZERS_PARALLELISM", raising=False)
    else:
        monkeypatch.setenv("TOKENIZERS_PARALLELISM", before)
    seen = []
    real = encoding.Encoder.encode

    def encode(self, texts):
        seen.append(os.environ.get("TOKENIZERS_PARALLELISM"))
        return real(self, texts)

    monkeypatch.setattr(encoding.Encoder, "encode", encode)
    encode_file(tmp_path, tokenizer, texts(20, seed=6), "pool", threads=2)
    assert seen and set(seen) == {"false"}
    assert os.environ.get("TOKENIZERS_PARALLELISM") == before
    monkeypatch.setattr(encoding.Encoder, "encode", lambda *_: 1 / 0)  # restored after a failure too
    with pytest.raises(FtcliError, match=r"^fails\.jsonl: row 1: tokenization failed \(division by zero\)$"):
        encode_file(tmp_path, tokenizer, texts(20, seed=6), "fails", threads=2)
    assert os.environ.get("TOKENIZERS_PARALLELISM") == before
