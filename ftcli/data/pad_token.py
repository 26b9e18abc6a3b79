"""Which token id pads a batch: chosen once, when the data is prepared, and used everywhere.

The order: the tokenizer's own pad token, else the model config's `pad_token_id`, else the EOS
token (the tokenizer's, else the model config's). Decoder LLMs (GPT-2, Llama, Mistral, ...) ship
without a pad token, and their classification head pools the last token that is not padding: the
id the collator pads with must be the id the model config names, or the head pools at a padding
position and results change with how rows are batched. The manifest records the choice; the
model config (ftcli.modeling) and the exported tokenizer are given the same id.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftcli.errors import FtcliError


@dataclass(frozen=True)
class PadToken:
    id: int
    source: str  # where the id comes from, in words ("the tokenizer's pad token", ...)


def _first(value) -> int | None:
    """An id from a config field, which may hold a list (Llama 3's several EOS ids)."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return int(value) if isinstance(value, int) and value >= 0 else None


def resolve(tokenizer, model_config: dict) -> PadToken:
    """The pad id for this tokenizer and model (`model_config`: the model's config.json)."""
    if tokenizer.pad_token_id is not None:
        return PadToken(int(tokenizer.pad_token_id), "the tokenizer's pad token")
    if (pad := _first(model_config.get("pad_token_id"))) is not None:
        return PadToken(pad, "the model config's pad_token_id (the tokenizer has no pad token)")
    if tokenizer.eos_token_id is not None:
        return PadToken(int(tokenizer.eos_token_id), "the tokenizer's EOS token (it has no pad token)")
    if (eos := _first(model_config.get("eos_token_id"))) is not None:
        return PadToken(eos, "the model config's eos_token_id (no pad token anywhere)")
    raise FtcliError("model.tokenizer: the tokenizer has no pad token and neither it nor the model config names a "
                     "pad or EOS token; save the tokenizer with a pad token (tokenizer.add_special_tokens("
                     "{'pad_token': '[PAD]'})) and resize the model's embeddings to match")


def give_tokenizer(tokenizer, pad_id: int) -> None:
    """Make `tokenizer` pad with `pad_id` (it is saved with the exported model, whose users pad
    with it); a tokenizer that has its own pad token keeps it (it is the resolved one)."""
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_id)
