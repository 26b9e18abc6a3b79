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
    done = encoder.encode([pa.array(a), pa.array(b)])
    ids, types, cut = done.ids, done.types, done.cut
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
    f, s = fast.encode([pa.array(a), pa.array(b)]), slow.encode([pa.array(a), pa.array(b)])
    assert (f.ids, f.types, f.windows) == (s.ids, s.types, s.windows)


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


def test_a_split_in_several_shard_files_is_read_from_them_all_in_order(tmp_path):
    """datasets writes a large split as 500 MB shards: they are read with plain reads too (a scan
    of the mapped table would leave every page of the texts resident)."""
    from datasets import concatenate_datasets, load_dataset

    parts = [load_dataset("json", data_files=str(write_jsonl(tmp_path / f"{k}.jsonl", texts(50, seed=k))),
                          split="train", cache_dir=str(tmp_path / "raw")) for k in range(3)]
    ds = concatenate_datasets(parts)  # a table over three files, as a sharded split is
    assert len(ds.cache_files) == 3
    opened = []
    real_open = pa.OSFile
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pa, "OSFile", lambda path, *a: opened.append(path) or real_open(path, *a))
        read = pa.Table.from_batches(list(encoding.raw_batches(ds)))
    assert opened == [f["filename"] for f in ds.cache_files]
    assert read.select(ds.column_names).equals(ds.data.table)


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


# ------------------------------------------------------------------------------------------------
# data.long_texts: windows


def windows_config(pair: bool, stride: int | None, max_windows: int | None = None) -> DataConfig:
    return DataConfig(files={"train": "t.jsonl"}, text_columns=["a", "b"] if pair else ["a"], label_column="label",
                      long_texts="windows", stride=stride, max_windows=max_windows)


def long_texts(n: int, seed: int, shortest: int = 1, longest: int = 90) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(shortest, longest))) for _ in range(n)]


def tokenizer_windows(tokenizer, texts: list, max_length: int, stride: int) -> dict:
    """What the tokenizer itself gives: every window of every text, and which text each came from."""
    pair = isinstance(texts[0], tuple)
    args = ([t[0] for t in texts], [t[1] for t in texts]) if pair else (texts,)
    return tokenizer(*args, truncation="only_second" if pair else True, max_length=max_length, stride=stride,
                     return_overflowing_tokens=True)


@pytest.mark.parametrize("pair", [False, True], ids=["single", "pair"])
@pytest.mark.parametrize("stride", [0, 3, 7])
@pytest.mark.parametrize("shortcut", [True, False], ids=["ascii-shortcut", "tokenizer"])
def test_windows_are_the_tokenizers_own_overflow(tokenizer, pair, stride, shortcut):
    a = long_texts(120, seed=11)
    b = long_texts(120, seed=12)
    if pair:
        a = [" ".join(t.split()[:4]) for t in a]  # the first text stays whole: it must leave room
    encoder = encoding.Encoder(tokenizer, windows_config(pair, stride), max_length=16)
    if not shortcut:
        encoder.ascii = None
    assert (encoder.ascii is not None) == shortcut
    done = encoder.encode([pa.array(a), pa.array(b)] if pair else [pa.array(a)])
    expected = tokenizer_windows(tokenizer, list(zip(a, b)) if pair else a, 16, stride)
    assert done.ids == expected["input_ids"]
    assert done.types == expected["token_type_ids"]
    assert np.repeat(np.arange(len(a)), done.windows).tolist() == expected["overflow_to_sample_mapping"]
    assert max(done.windows) >= 4 and min(done.windows) == 1  # long and short texts
    assert not any(done.cut)
    if pair:  # every window starts with the whole first text
        first = tokenizer(a, add_special_tokens=False)["input_ids"]
        starts = np.repeat(np.arange(len(a)), done.windows)
        assert all(w[1:1 + len(first[d])] == first[d] for w, d in zip(done.ids, starts))


def test_the_overlap_is_the_stride():
    """Each window repeats the last `stride` tokens of the one before it (no special tokens between)."""
    from transformers import AutoTokenizer
    import tempfile
    from conftest import bert_tokenizer

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *[f"w{i}" for i in range(100)]]
    with tempfile.TemporaryDirectory() as folder:
        tok = bert_tokenizer(vocab, __import__("pathlib").Path(folder))
        text = " ".join(f"w{i}" for i in range(40))
        encoder = encoding.Encoder(tok, windows_config(False, 4), max_length=16)
        done = encoder.encode([pa.array([text])])
        content = [w[1:-1] for w in done.ids]  # without [CLS] and [SEP]
        assert [len(c) for c in content] == [14, 14, 14, 10]
        for before, after in zip(content, content[1:]):
            assert after[:4] == before[-4:]
        seen = [t for c in content[:1] for t in c] + [t for c in content[1:] for t in c[4:]]
        assert tok.convert_ids_to_tokens(seen) == text.split()  # the whole text, once, in order


def test_max_windows_keeps_the_first_windows_and_flags_the_documents_it_cut(tokenizer):
    a = long_texts(60, seed=13)
    whole = encoding.Encoder(tokenizer, windows_config(False, 2), max_length=16).encode([pa.array(a)])
    capped = encoding.Encoder(tokenizer, windows_config(False, 2, max_windows=2), max_length=16).encode([pa.array(a)])
    assert capped.windows == [min(n, 2) for n in whole.windows]
    assert capped.cut == [n > 2 for n in whole.windows] and any(capped.cut)
    starts = np.r_[0, np.cumsum(whole.windows)[:-1]]
    assert capped.ids == [w for s, n in zip(starts, capped.windows) for w in whole.ids[s:s + n]]


def windows_file(tmp_path, tokenizer, rows, name, data: DataConfig, *, threads=1, positions=None):
    import datasets as hfds

    path = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    ds = hfds.load_dataset("json", data_files=str(path), split="train", cache_dir=str(tmp_path / "raw"))
    encoder = encoding.Encoder(tokenizer, data, max_length=16)
    schema = encoding.features(encoder.keep, hfds.Value("int64"), windows=True).arrow_schema
    out = tmp_path / f"{name}.arrow"
    done = encoding.encode_split(ds, encoder, out, schema, ds.data.column("label").combine_chunks(),
                                 positions=positions, threads=threads, source=path.name)
    return hfds.Dataset.from_file(str(out)), done


def test_a_split_of_windows_carries_each_windows_document_and_label_in_order(tmp_path, tokenizer, monkeypatch):
    a = long_texts(97, seed=14)
    rows = [{"a": t, "b": "", "label": i % 3} for i, t in enumerate(a)]
    data = DataConfig(files={"train": "t.jsonl"}, text_columns=["a"], label_column="label", long_texts="windows",
                      stride=3, max_windows=5)
    one, done = windows_file(tmp_path, tokenizer, rows, "one", data)
    monkeypatch.setattr(encoding, "BATCH_ROWS", 6)  # windows of one batch's documents cross no batch
    many, _ = windows_file(tmp_path, tokenizer, rows, "many", data, threads=3)
    assert one.data.table.equals(many.data.table)
    expected = tokenizer_windows(tokenizer, a, 16, 3)
    docs = np.asarray(expected["overflow_to_sample_mapping"])
    index = np.concatenate([np.flatnonzero(docs == d)[:5] for d in range(len(a))])  # at most 5 a document
    assert one["input_ids"] == [expected["input_ids"][i] for i in index]
    assert one["document"] == docs[index].tolist()
    assert one["labels"] == [rows[d]["label"] for d in docs[index]]
    counts = np.bincount(docs, minlength=len(a))
    assert one["truncated"] == [bool(counts[d] > 5) for d in docs[index]]
    assert (done.documents, done.rows, done.most_windows) == (97, len(index), 5)
    assert done.truncated == int((counts > 5).sum()) > 0

    picked = np.array([3, 4, 50, 96])  # a held-out split: documents numbered within it
    part, done = windows_file(tmp_path, tokenizer, rows, "part", data, positions=picked)
    assert sorted(set(part["document"])) == [0, 1, 2, 3] and done.documents == 4
    assert part["labels"] == [rows[picked[d]]["label"] for d in part["document"]]


def test_long_documents_are_tokenized_in_batches_of_bounded_text(monkeypatch):
    monkeypatch.setattr(encoding, "BATCH_BYTES", 100)
    batch = pa.RecordBatch.from_arrays([pa.array(["x" * 30] * 10 + ["y" * 500] + ["z"] * 4)], names=["a"])
    assert list(encoding._cuts(batch, rows=500)) == [(0, 3), (3, 6), (6, 9), (9, 10), (10, 11), (11, 15)]
    assert list(encoding._cuts(batch, rows=2)) == [(i, min(i + 2, 15)) for i in range(0, 10, 2)] + \
        [(10, 11), (11, 13), (13, 15)]


def test_a_stride_that_leaves_a_window_no_new_tokens_is_one_line(tokenizer):
    from ftcli.errors import FtcliError

    # 16 tokens, 2 of them [CLS] and [SEP]: 14 hold text, and a stride of 14 would move by 0
    with pytest.raises(FtcliError, match=r"^data\.stride: 14 tokens of overlap leave no new tokens in a window of "
                                         r"max_length 16 \(14 after 2 special tokens\); give a stride below 14$"):
        encoding.Encoder(tokenizer, windows_config(False, 14), max_length=16)
    encoding.Encoder(tokenizer, windows_config(False, 13), max_length=16)
    with pytest.raises(FtcliError, match=r"below 13$"):  # a pair has one [SEP] more
        encoding.Encoder(tokenizer, windows_config(True, 13), max_length=16)


@pytest.mark.parametrize("first_words, message", [
    (30, r"^bad\.jsonl: row 10: its a alone is 30 tokens, and long_texts: windows keeps the first text whole"),
    (10, r"^bad\.jsonl: row 10: its a \(10 tokens\) leaves 3 tokens a window for the second text, not more than "
         r"data\.stride 4; give a stride below 3 or raise data\.max_length$"),
])
def test_a_first_text_that_leaves_no_room_for_windows_is_named_by_its_row(tmp_path, tokenizer, monkeypatch,
                                                                          first_words, message):
    from ftcli.errors import FtcliError

    rows = [{"a": "cat dog", "b": " ".join(["bird"] * 40), "label": 0} for _ in range(20)]
    rows[9]["a"] = " ".join(["cat"] * first_words)
    rows[12]["a"], rows[12]["b"] = " ".join(["cat"] * 11), "dog"  # no room for a stride, but fits whole
    monkeypatch.setattr(encoding, "BATCH_ROWS", 4)
    with pytest.raises(FtcliError, match=message):
        windows_file(tmp_path, tokenizer, rows, "bad", windows_config(True, 4), threads=2)
    rows[9]["a"] = "cat"
    _, done = windows_file(tmp_path, tokenizer, rows, "good", windows_config(True, 4))
    assert done.documents == 20


def test_windows_need_a_fast_tokenizer(tokenizer, monkeypatch):
    from ftcli.errors import FtcliError

    monkeypatch.setattr(type(tokenizer), "is_fast", property(lambda self: False))
    with pytest.raises(FtcliError, match=r"^data\.long_texts: windows needs a fast tokenizer"):
        encoding.Encoder(tokenizer, windows_config(False, 2), max_length=16)


@pytest.mark.parametrize("family", ["roberta", "deberta-v2", "t5", "gpt2", "llama"])
@pytest.mark.parametrize("pair", [False, True], ids=["single", "pair"])
def test_every_familys_windows_are_its_tokenizers_overflow(family, pair):
    """Byte-level BPE, Unigram and SentencePiece-style tokenizers, with and without special tokens
    (GPT-2 adds none; Llama only a BOS)."""
    from families import tokenizer_for

    tok = tokenizer_for(family)
    a, b = long_texts(40, seed=15, longest=120), long_texts(40, seed=16, longest=120)
    if pair:  # small vocabularies cut a word into several pieces: 3 words take up to ~17 tokens
        a = [" ".join(t.split()[:3]) for t in a]
    length = 40 if pair else 24
    encoder = encoding.Encoder(tok, windows_config(pair, 5), max_length=length)
    done = encoder.encode([pa.array(a), pa.array(b)] if pair else [pa.array(a)])
    expected = tok(*((a, b) if pair else (a,)), truncation="only_second" if pair else True, max_length=length,
                   stride=5, return_overflowing_tokens=True)
    assert done.ids == expected["input_ids"]
    if done.types is not None:
        assert done.types == expected["token_type_ids"]
    assert np.repeat(np.arange(len(a)), done.windows).tolist() == expected["overflow_to_sample_mapping"]
    assert max(done.windows) > 2
