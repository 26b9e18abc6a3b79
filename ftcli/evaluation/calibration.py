"""Calibrated probabilities: the expected calibration error, temperature scaling fitted on a
split, and the temperature kept with a trained model (`calibration.json`), which eval, predict
and the ONNX export apply.

Temperature scaling (Guo et al., 2017) divides every logit by one number T > 0 fitted to
minimize the negative log-likelihood on held-out rows. It changes no single-label prediction
(the argmax is the same), only how sure the probabilities say the model is.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ftcli.errors import FtcliError
from ftcli.files import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np
    import torch

CALIBRATION_FILE = "calibration.json"
"""In a trained model folder (and an export): the fitted temperature and what it measured."""

DIAGRAM_FILE = "reliability_diagram.png"


@dataclass(frozen=True)
class Calibration:
    """A fitted temperature and the calibration error before and after it, on `split`."""

    temperature: float
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    split: str
    rows: int
    bins: int

    def save(self, folder: Path) -> Path:
        path = folder / CALIBRATION_FILE
        atomic_write_text(path, json.dumps({**asdict(self), "chosen_by": "ftcli calibrate"}, indent=2) + "\n")
        return path


def load_calibration(folder: Path) -> Calibration | None:
    """The calibration kept in a model (or export) folder; None when it has none."""
    path = folder / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        found = Calibration(**{k: data[k] for k in Calibration.__dataclass_fields__})
        if not (math.isfinite(found.temperature) and found.temperature > 0):
            raise ValueError
    except (OSError, ValueError, KeyError, TypeError):
        raise FtcliError(f"{path}: unreadable or not a positive temperature; delete it, or run ftcli calibrate "
                         "again") from None
    return found


def temperature_of(folder: Path) -> float:
    """The temperature a model folder's logits are divided by (1.0: not calibrated)."""
    found = load_calibration(folder)
    return found.temperature if found is not None else 1.0


def confidences(scores: np.ndarray, references: np.ndarray, multi_label: bool) -> tuple[np.ndarray, np.ndarray]:
    """What calibration is measured on: for single-label rows the predicted label's probability
    and whether it is right; for multi-label rows every (row, label) probability and whether the
    row carries that label (each label is a yes/no question)."""
    import numpy as np

    scores = np.asarray(scores, dtype=np.float64)
    refs = np.asarray(references)
    if multi_label:
        return scores.reshape(-1), (refs.reshape(-1) > 0).astype(np.float64)
    return scores.max(-1), (scores.argmax(-1) == refs).astype(np.float64)


def reliability(confidence: np.ndarray, correct: np.ndarray, bins: int = 15):
    """Equal-width bins over [0, 1]: each bin's count, mean confidence and accuracy."""
    import numpy as np

    which = np.minimum((np.asarray(confidence) * bins).astype(np.int64), bins - 1)
    counts = np.bincount(which, minlength=bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(which, weights=confidence, minlength=bins) / counts
        accuracy = np.bincount(which, weights=correct, minlength=bins) / counts
    return counts, mean_conf, accuracy


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over equal-width bins."""
    import numpy as np

    counts, mean_conf, accuracy = reliability(confidence, correct, bins)
    filled = counts > 0
    total = counts.sum()
    return float((counts[filled] * np.abs(mean_conf[filled] - accuracy[filled])).sum() / total) if total else 0.0


def probabilities(logits: torch.Tensor, multi_label: bool, temperature: float = 1.0) -> torch.Tensor:
    """Softmax (multi-label: sigmoid) of the logits divided by the temperature."""
    import torch

    scaled = logits.double() / temperature
    return torch.sigmoid(scaled) if multi_label else torch.softmax(scaled, -1)


def nll(logits: torch.Tensor, references: torch.Tensor, multi_label: bool, temperature: float,
        documents: torch.Tensor | None = None, pooling: str = "mean") -> float:
    """Mean negative log-likelihood at `temperature`. With `documents` (windows of long texts)
    multi-label windows' probabilities are pooled per document first, as eval pools them; logits
    that are already pooled need none (pooling commutes with dividing by T)."""
    import torch
    import torch.nn.functional as F

    if multi_label:
        p = torch.sigmoid(logits.double() / temperature)
        if documents is not None:
            from ftcli.evaluation.windows import pool

            p = pool(p, documents, pooling).values.double()
        p = p.clamp(1e-12, 1 - 1e-12)
        return float(F.binary_cross_entropy(p, references.double().clamp(min=0), reduction="mean"))
    return float(F.cross_entropy(logits.double() / temperature, references.long()))


def fit_temperature(logits: torch.Tensor, references: torch.Tensor, multi_label: bool,
                    documents: torch.Tensor | None = None, pooling: str = "mean") -> float:
    """The temperature minimizing the NLL: a golden-section search over log T in [1/20, 20]
    (the NLL is unimodal in T for a fixed set of logits); deterministic, no optimizer state."""
    lo, hi = math.log(0.05), math.log(20.0)
    ratio = (math.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return nll(logits, references, multi_label, math.exp(log_t), documents, pooling)

    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = loss(a), loss(b)
    for _ in range(60):  # the bracket shrinks by 0.618 a step: 60 steps reach ~1e-12 in log T
        if fa <= fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = loss(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = loss(b)
    return round(math.exp((lo + hi) / 2), 6)
