"""Which id pads: the tokenizer's pad, else the model config's, else EOS; and the default
max_length from the tokenizer's and the model's position limits."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from ftcli.data.cache import default_max_length
from ftcli.data.pad_token import give_tokenizer, resolve
from ftcli.data.sources import position_limit
from ftcli.errors import FtcliError


def _tok(pad=None, eos=None):
    return SimpleNamespace(pad_token_id=pad, eos_token_id=eos)


@pytest.mark.parametrize("tok, config, want, source", [
    (_tok(pad=3, eos=2), {"pad_token_id": 7, "eos_token_id": 9}, 3, "the tokenizer's pad token"),
    (_tok(eos=2), {"pad_token_id": 7, "eos_token_id": 9}, 7, "the model config's pad_token_id"),
    (_tok(eos=2), {"eos_token_id": 9}, 2, "the tokenizer's EOS token"),
    (_tok(), {"eos_token_id": [128001, 128009]}, 128001, "the model config's eos_token_id"),
    (_tok(pad=0), {}, 0, "the tokenizer's pad token"),  # id 0 is an id, not "none"
])
def test_pad_order(tok, config, want, source):
    pad = resolve(tok, config)
    assert pad.id == want and pad.source.startswith(source)


def test_no_pad_and_no_eos_is_one_clear_error():
    with pytest.raises(FtcliError, match="no pad token.*add_special_tokens"):
        resolve(_tok(), {"pad_token_id": None})


def test_a_tokenizer_without_pad_is_given_the_resolved_one():
    from transformers import GPT2TokenizerFast

    tok = GPT2TokenizerFast(vocab={"a": 0, "b": 1, "<|endoftext|>": 2}, merges=[])
    assert tok.pad_token_id is None
    give_tokenizer(tok, 2)
    assert tok.pad_token_id == 2 and tok.pad_token == "<|endoftext|>"
    give_tokenizer(tok, 0)  # one that has a pad keeps it
    assert tok.pad_token_id == 2


@pytest.mark.parametrize("config, limit", [
    ({"model_type": "bert", "max_position_embeddings": 512}, 512),
    ({"model_type": "roberta", "max_position_embeddings": 514, "pad_token_id": 1}, 512),
    ({"model_type": "gpt2", "n_positions": 1024}, 1024),
    ({"model_type": "t5"}, None),
])
def test_position_limit(config, limit):
    assert position_limit(config) == limit


@pytest.mark.parametrize("tokenizer_limit, config, want", [
    (int(1e30), {"n_positions": 64}, 64),  # GPT-2's tokenizer: "no limit"; the model has 64 positions
    (128, {"max_position_embeddings": 4096}, 128),
    (None, {"max_position_embeddings": 8192}, 512),  # capped
    (100, {}, 100),  # relative positions (T5): the tokenizer decides
])
def test_default_max_length(tmp_path, tokenizer_limit, config, want):
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": tokenizer_limit}))
    assert default_max_length(tmp_path, config) == want
