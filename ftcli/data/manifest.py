"""`manifest.json`: what a prepared dataset holds, read and written as typed objects.

Written last by `build()` and never modified; the rest of ftcli reads it through `Manifest` and
`SplitStats`, never by string keys.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SplitStats:
    """One prepared split: its rows and tokens, and (labelled splits) its classes."""

    rows: int  # rows of the prepared split: with windows, windows
    labeled: bool
    tokens: int
    max_tokens: int  # the longest row, after truncation
    truncated: int  # documents not read whole: cut at max_length, or (windows) by data.max_windows
    source: str  # where its rows come from, in words (a file; "N rows held out, seed S")
    classes: dict[str, int] | None = None  # documents per label (classification)
    no_label: int | None = None  # multi-label documents whose label set is empty (data.allow_empty_labels)
    documents: int | None = None  # input rows; None without windows (then each row is one)
    most_windows: int | None = None  # windows: the most windows a document gave (after max_windows)

    @property
    def docs(self) -> int:
        """Input rows (documents), with or without windows."""
        return self.rows if self.documents is None else self.documents

    @property
    def mean_windows(self) -> float | None:
        return self.rows / self.documents if self.documents else None


@dataclass(frozen=True)
class Manifest:
    key: str  # the cache key: a hash of `parts`
    parts: dict[str, Any]  # what the key hashes: the data's and tokenizer's fingerprints, the settings
    label_names: list[str]  # [] for regression
    problem_type: str  # single_label, multi_label or regression
    pad_token_id: int  # what batches are padded with (ftcli.data.pad_token)
    max_length: int
    model_input_names: list[str]  # the tokenizer's outputs kept (input_ids, attention_mask, ...)
    splits: dict[str, SplitStats]
    checksums: dict[str, Any]  # size and sha256 of every dataset file
    holdout: dict[str, Any] | None = None  # data.validation_split as a fraction or count: what was held out
    pad_token_source: str = ""  # where pad_token_id comes from, in words
    long_texts: str = "truncate"  # data.long_texts: truncate, or windows (a row per window)
    stride: int | None = None  # windows: the overlap, resolved
    max_windows: int | None = None  # windows: the cap per document (None: none)
    created: str = ""
    ftcli: str = ""  # the version that built it
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # keys a newer ftcli wrote, kept

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Manifest:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        split_names = {f.name for f in dataclasses.fields(SplitStats)}
        values = {k: v for k, v in raw.items() if k in names}
        values["splits"] = {s: SplitStats(**{k: v for k, v in info.items() if k in split_names})
                            for s, info in raw["splits"].items()}
        return cls(**values, extra={k: v for k, v in raw.items() if k not in names})

    @classmethod
    def read(cls, path: Path) -> Manifest:
        return cls.from_json(json.loads(Path(path).read_text()))

    @property
    def windowed(self) -> bool:
        """Whether rows are windows of documents (each carries its `document`)."""
        return self.long_texts == "windows"

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(out.pop("extra"))
        return out
