"""Multi-label thresholds: the one a model predicts with, where it comes from, and the search for
the best one (`eval --best-threshold`, kept with the model by `--save-threshold`)."""

from __future__ import annotations

import json
from pathlib import Path

from ftcli.config import Config
from ftcli.errors import FtcliError
from ftcli.evaluation.metrics import f1_micro
from ftcli.files import atomic_write_text


THRESHOLD_FILE = "thresholds.json"
"""In a trained model folder: the multi-label threshold `eval --save-threshold` chose, which eval
and predict then use unless eval.threshold is set."""


def threshold_for(cfg: Config, folder: Path) -> tuple[float, str]:
    """The multi-label threshold to predict with, and where it comes from: eval.threshold when the
    config or --set gives it, else the one saved with the model (`eval --save-threshold`), else
    the default 0.5."""
    if cfg.origin("eval.threshold") != "default":
        return cfg.eval.threshold, "eval.threshold"
    path = folder / THRESHOLD_FILE
    if path.is_file():
        try:
            value = float(json.loads(path.read_text())["threshold"])
        except (OSError, ValueError, KeyError, TypeError):
            raise FtcliError(f"{path}: unreadable; delete it, or run ftcli eval --best-threshold --save-threshold "
                             "again") from None
        if 0 < value < 1:
            return value, f"saved with the model ({path.name})"
        raise FtcliError(f"{path}: threshold {value} is not between 0 and 1; delete the file or save it again")
    return cfg.eval.threshold, "default"


def best_threshold(scores, references) -> dict[str, float]:
    """The single threshold (0.05 to 0.95 in steps of 0.05) with the best micro F1 on these rows."""
    import numpy as np

    r = np.asarray(references, dtype=np.int64)
    best = {"threshold": 0.5, "f1_micro": -1.0}
    for t in np.round(np.arange(0.05, 0.951, 0.05), 2):
        p = (scores >= t).astype(np.int64)
        f1 = f1_micro(p, r)
        if f1 > best["f1_micro"] + 1e-12:
            best = {"threshold": float(t), "f1_micro": round(f1, 6)}
    return best


def save_threshold_file(folder: Path, best: dict[str, float], split: str) -> Path:
    path = folder / THRESHOLD_FILE
    atomic_write_text(path, json.dumps({"threshold": best["threshold"], "f1_micro": best["f1_micro"],
                                        "split": split, "chosen_by": "ftcli eval --best-threshold"}, indent=2) + "\n")
    return path


def few_positives_warning(predictions, references, threshold: float, split: str) -> str | None:
    """Multi-label: the warning for a model that predicts (almost) no label at `threshold`, fewer
    than a tenth of the labels the rows carry. With sparse labels that is what an unweighted model
    learns first, and its F1 is 0 while nothing says why."""
    import numpy as np

    predicted, true = int(np.asarray(predictions).sum()), int((np.asarray(references) > 0).sum())
    if true == 0 or predicted >= 0.1 * true:
        return None
    return (f"{split}: the model predicted {predicted:,} label(s) where the rows carry {true:,}, at threshold "
            f"{threshold:.2f}: with sparse labels the probabilities stay below it. Try `ftcli eval --best-threshold "
            "--save-threshold`, a lower eval.threshold, train.class_weights: auto, or more epochs")
