"""Pooling a document's windows (`data.long_texts: windows`) into one prediction.

Every process gathers every window's outputs (`gather_for_metrics`) before pooling, so a document
whose windows were evaluated on different processes is pooled from all of them, and N processes
give the 1-process numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch


@dataclass(frozen=True)
class Pooled:
    """One row per document, documents in increasing order."""

    documents: np.ndarray  # each row's document (its row in the split)
    values: torch.Tensor  # the pooled outputs, documents x outputs (float32)
    windows: np.ndarray  # windows pooled into each row
    first: np.ndarray  # each document's first window, as an index into the windows given


def pool(values: torch.Tensor, documents: torch.Tensor, how: str) -> Pooled:
    """`values` (windows x outputs: logits, or multi-label probabilities) pooled per document of
    `documents` (one per window): `mean` or `max` of each output over the document's windows. The
    sums run in float64 in the windows' given order within a document (which the dataloader fixes
    for any number of processes), so the result does not depend on how windows were batched."""
    import numpy as np
    import torch

    if how not in ("mean", "max"):
        raise ValueError(f"pooling {how!r}: use mean or max")
    docs = documents.cpu().numpy()
    order = np.argsort(docs, kind="stable")
    ordered = docs[order]
    starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]]) if len(ordered) else np.zeros(0, np.int64)
    windows = np.diff(np.r_[starts, len(ordered)])
    v = values.detach().cpu().double().numpy()[order]
    if not len(v):
        pooled = np.zeros((0, *v.shape[1:]))
    elif how == "mean":
        pooled = np.add.reduceat(v, starts, axis=0) / windows.reshape(-1, *([1] * (v.ndim - 1)))
    else:
        pooled = np.maximum.reduceat(v, starts, axis=0)
    return Pooled(documents=ordered[starts], values=torch.from_numpy(pooled).float(), windows=windows,
                  first=order[starts])
