"""Thresholds: how a model's probabilities become labels, where they come from, and the searches
that choose them.

- Multi-label: a label is predicted when its probability reaches the threshold: one for every
  label (eval.threshold, or `eval --best-threshold --save-threshold`), or one per label
  (`ftcli calibrate`).
- Binary single-label: the second label is predicted when its probability reaches the
  threshold (eval.threshold when given, or `ftcli calibrate`, for a metric the user names);
  without one, the more probable label.

Chosen thresholds are kept with the model in `thresholds.json`; eval, predict and the ONNX
export use them unless eval.threshold is set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftcli.config import Config
from ftcli.errors import FtcliError
from ftcli.evaluation.metrics import FUNCTIONS, f1_from_counts, f1_micro
from ftcli.files import atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

THRESHOLD_FILE = "thresholds.json"
"""In a trained model folder (and an export): the thresholds eval and predict use unless
eval.threshold is set."""

GRID = tuple(round(0.01 * k, 2) for k in range(1, 100))
"""The thresholds `ftcli calibrate` tries: 0.01 to 0.99 in steps of 0.01."""


@dataclass(frozen=True)
class Thresholds:
    """The thresholds a model predicts with. `values`: multi-label, one per label (all equal when
    one threshold serves every label); binary, one value for the second label's probability;
    None: the most probable label (single-label without a threshold)."""

    values: tuple[float, ...] | None
    source: str  # "default", "eval.threshold", or the file they were saved in

    @property
    def single(self) -> float | None:
        """The one threshold when every label shares it (binary: the threshold); else None."""
        if not self.values or len(set(self.values)) != 1:
            return None
        return self.values[0]

    def loop_args(self, multi_label: bool) -> dict[str, Any]:
        """These thresholds as `run_eval` takes them (`threshold`, `binary_threshold`)."""
        if multi_label:
            return {"threshold": self.values or 0.5}
        return {"binary_threshold": None if self.values is None else self.values[0]}

    def describe(self, labels: list[str]) -> str:
        if self.values is None:
            return "the most probable label"
        if self.single is not None:
            return f"{self.single:.2f}"
        return ", ".join(f"{n} {v:.2f}" for n, v in zip(labels, self.values))


def threshold_for(cfg: Config, folder: Path, labels: list[str], multi_label: bool) -> Thresholds:
    """The thresholds to predict with: eval.threshold when the config or --set gives it, else
    those saved with the model (`thresholds.json`), else 0.5 for multi-label data and the most
    probable label for single-label data. Regression and more than two single labels: None."""
    binary = not multi_label and len(labels) == 2
    if not multi_label and not binary:
        return Thresholds(None, "default")
    width = len(labels) if multi_label else 1
    if cfg.origin("eval.threshold") != "default":
        return Thresholds((cfg.eval.threshold,) * width, "eval.threshold")
    saved = read_thresholds(folder, labels, multi_label)
    if saved is not None:
        return saved
    return Thresholds((cfg.eval.threshold,) * width, "default") if multi_label else Thresholds(None, "default")


def read_thresholds(folder: Path, labels: list[str], multi_label: bool) -> Thresholds | None:
    """The thresholds saved in `folder` (None: none saved), checked against the model's labels."""
    path = folder / THRESHOLD_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        kind = data.get("kind", "multi_label")  # files from `eval --save-threshold` before 0.2 carry no kind
        if kind == "per_label":
            by_label = {str(k): float(v) for k, v in data["thresholds"].items()}
            values = tuple(by_label[n] for n in labels)
        else:
            values = (float(data["threshold"]),)
    except KeyError as exc:
        raise FtcliError(f"{path}: no threshold for {exc}; delete it, or run ftcli calibrate again") from None
    except (OSError, ValueError, TypeError, AttributeError):
        raise FtcliError(f"{path}: unreadable; delete it, or run ftcli calibrate (or ftcli eval --best-threshold "
                         "--save-threshold) again") from None
    bad = [v for v in values if not 0 < v < 1]
    if bad:
        raise FtcliError(f"{path}: threshold {bad[0]} is not between 0 and 1; delete the file or save it again")
    if (kind == "binary") == multi_label:
        raise FtcliError(f"{path}: holds a {'binary' if kind == 'binary' else 'multi-label'} threshold but the model is "
                         f"{'multi-label' if multi_label else 'single-label'}; delete it, or run ftcli calibrate again")
    if multi_label and kind != "per_label":
        values = values * len(labels)
    return Thresholds(values, f"saved with the model ({path.name})")


def decide(scores, thresholds: Thresholds, multi_label: bool):
    """Predicted labels from probabilities: multi-label, rows x labels of 0/1; single-label,
    label ids (binary with a threshold: 1 when the second label's probability reaches it)."""
    import numpy as np

    scores = np.asarray(scores)
    if multi_label:
        return (scores >= np.asarray(thresholds.values, dtype=scores.dtype)).astype(np.int64)
    if thresholds.values is not None:
        return (scores[:, 1] >= thresholds.values[0]).astype(np.int64)
    return scores.argmax(-1)


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


def _best_of(values) -> float:
    """The grid threshold with the best score; ties go to the one nearest 0.5 (the least tuned)."""
    import numpy as np

    values = np.asarray(values, dtype=np.float64)
    top = values.max()
    candidates = [t for t, v in zip(GRID, values) if v >= top - 1e-12]
    return min(candidates, key=lambda t: (abs(t - 0.5), t))


def tune_per_label(scores, references) -> tuple[float, ...]:
    """Multi-label: each label's threshold on GRID maximizing that label's F1. A label no row
    carries keeps 0.5: no threshold can be right about it."""
    import numpy as np

    s, r = np.asarray(scores, dtype=np.float64), np.asarray(references) > 0
    grid = np.asarray(GRID)
    chosen = []
    for k in range(s.shape[1]):
        if not r[:, k].any():
            chosen.append(0.5)
            continue
        hit = s[:, k, None] >= grid[None, :]
        tp = (hit & r[:, k, None]).sum(0)
        fp = (hit & ~r[:, k, None]).sum(0)
        fn = r[:, k].sum() - tp
        chosen.append(_best_of(f1_from_counts(tp, fp, fn)))
    return tuple(chosen)


BINARY_METRICS = ("f1", "accuracy", "matthews_correlation")
"""What a binary threshold can be chosen for (the second label is the positive one)."""


def tune_binary(scores, references, metric: str) -> float:
    """Binary: the threshold on the second label's probability (GRID) maximizing `metric`."""
    import numpy as np

    if metric not in BINARY_METRICS:
        raise FtcliError(f"--metric {metric!r}: a binary threshold is chosen for one of {', '.join(BINARY_METRICS)}")
    p1, r = np.asarray(scores, dtype=np.float64)[:, 1], np.asarray(references, dtype=np.int64)
    return _best_of([FUNCTIONS[metric]((p1 >= t).astype(np.int64), r) for t in GRID])


def save_thresholds(folder: Path, record: dict[str, Any]) -> Path:
    """thresholds.json in `folder`, written atomically. `record` holds `kind` (`per_label`,
    `binary` or `multi_label`) and its thresholds with what chose them."""
    path = folder / THRESHOLD_FILE
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def save_threshold_file(folder: Path, best: dict[str, float], split: str, temperature: float = 1.0) -> Path:
    """`eval --save-threshold`: the one multi-label threshold `best_threshold` chose."""
    return save_thresholds(folder, {"kind": "multi_label", "threshold": best["threshold"], "f1_micro": best["f1_micro"],
                                    "split": split, "temperature": temperature,
                                    "chosen_by": "ftcli eval --best-threshold"})


def few_positives_warning(predictions, references, threshold: float, split: str) -> str | None:
    """Multi-label: the warning for a model that predicts (almost) no label at `threshold`, fewer
    than a tenth of the labels the rows carry. With sparse labels that is what an unweighted model
    learns first, and its F1 is 0 while nothing says why."""
    import numpy as np

    predicted, true = int(np.asarray(predictions).sum()), int((np.asarray(references) > 0).sum())
    if true == 0 or predicted >= 0.1 * true:
        return None
    return (f"{split}: the model predicted {predicted:,} label(s) where the rows carry {true:,}, at threshold "
            f"{threshold:.2f}: with sparse labels the probabilities stay below it. Try `ftcli calibrate` (a "
            "threshold per label), `ftcli eval --best-threshold --save-threshold`, a lower eval.threshold, "
            "train.class_weights: auto, or more epochs")
