"""BERT's normalizer and pre-tokenizer for ASCII text, done in bulk by Arrow's string kernels.

Why: in a BERT-family fast tokenizer (BertNormalizer, BertPreTokenizer, WordPiece) the normalizer
and the pre-tokenizer take more than half the encoding time, because they track every character's
origin, character by character. ftcli keeps no character offsets. For ASCII text the two steps are
simple: drop the control characters, turn tab, newline and carriage return into spaces, lowercase
(when the model does), and set every punctuation mark apart with spaces. Arrow does that to a whole
batch in a few microseconds a row, and a copy of the tokenizer without a normalizer, splitting on
whitespace, then gives the ids the original gives. Accents and Chinese characters, the rest of
BertNormalizer's work, do not occur in ASCII.

Rows that are not ASCII, and rows holding an added token's text (the tokenizer matches those
before normalizing), go to the original tokenizer instead.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import pyarrow as pa
    from tokenizers import Tokenizer

CONTROL = r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]"
"""What BertNormalizer's `clean_text` drops from ASCII: the control characters (Unicode category Cc),
except tab, newline and carriage return, which it counts as whitespace."""
WHITESPACE = r"[\t\n\r]"
"""What `clean_text` turns into a space (vertical tab and form feed are dropped before, as controls)."""
PUNCTUATION = r"([!-/:-@\[-`{-~])"
"""ASCII punctuation, which BertPreTokenizer splits off as words of their own."""

MAX_ADDED_TOKENS = 64
"""Beyond this many added tokens, looking for them in every row costs more than the shortcut saves."""


class AsciiBert:
    """Picks a batch's ASCII rows and prepares them for `encode_batch`, the shortcut tokenizer's;
    `of` gives one when the tokenizer has BERT's normalizer and pre-tokenizer, else None."""

    def __init__(self, shortcut: Tokenizer, clean: bool, lower: bool, added: list[str]):
        self.shortcut, self.clean, self.lower = shortcut, clean, lower
        self.added_pattern = "|".join(_literal(t) for t in added) or None
        # encode_batch_fast skips character offsets, which ftcli does not keep
        self.encode_batch = getattr(shortcut, "encode_batch_fast", shortcut.encode_batch)

    @classmethod
    def of(cls, backend: Tokenizer) -> AsciiBert | None:
        """The shortcut for `backend` (with its truncation and padding settings), or None."""
        from tokenizers import Tokenizer

        spec = json.loads(backend.to_str())
        normalizer, pre_tokenizer = spec.get("normalizer") or {}, spec.get("pre_tokenizer") or {}
        if normalizer.get("type") != "BertNormalizer" or pre_tokenizer.get("type") != "BertPreTokenizer":
            return None
        contents = [t["content"] for t in spec.get("added_tokens") or () if t.get("content")]
        if len(contents) > MAX_ADDED_TOKENS:
            return None
        # a row with an added token's text, as written or as normalized, goes to the original; the
        # shortcut has no added tokens, so it never splits one out of a row it is given
        added = sorted({*contents, *(backend.normalizer.normalize_str(t) for t in contents)} - {""})
        shortcut = Tokenizer.from_str(json.dumps({**spec, "normalizer": None, "added_tokens": [],
                                                  "pre_tokenizer": {"type": "WhitespaceSplit"}}))
        return cls(shortcut, clean=normalizer.get("clean_text", True), lower=normalizer.get("lowercase", True),
                   added=added)

    def split(self, columns: list[pa.Array]) -> tuple[np.ndarray, list[pa.Array]]:
        """Which rows the shortcut takes (a boolean mask over the batch), and those rows' texts,
        normalized and with punctuation set apart, one array per text column."""
        import pyarrow as pa
        import pyarrow.compute as pc

        takes, normalized = None, []
        for column in columns:
            text = column
            if self.clean:
                text = pc.replace_substring_regex(pc.replace_substring_regex(text, CONTROL, ""), WHITESPACE, " ")
            if self.lower:
                text = pc.ascii_lower(text)
            ok = pc.string_is_ascii(column)
            if self.added_pattern is not None:
                found = pc.or_(pc.match_substring_regex(column, self.added_pattern, ignore_case=True),
                               pc.match_substring_regex(text, self.added_pattern, ignore_case=True))
                ok = pc.and_(ok, pc.invert(found))
            takes = ok if takes is None else pc.and_(takes, ok)
            normalized.append(text)
        mask = takes.fill_null(False).to_numpy(zero_copy_only=False)
        if not mask.all():
            picked = pa.array(mask)
            normalized = [text.filter(picked) for text in normalized]
        return mask, [pc.replace_substring_regex(text, PUNCTUATION, r" \1 ") for text in normalized]


def _literal(text: str) -> str:
    """`text` as an RE2 pattern that matches it literally."""
    return "".join(c if c.isascii() and c.isalnum() else f"\\x{{{ord(c):x}}}" for c in text)
