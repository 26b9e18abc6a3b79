"""Metrics: which ones a run computes (`metric_name`, `metric_keys`), their formulas, and the
`Metric` that computes them over gathered predictions (`load_metric`; `evaluate_module` is the
same metric as an `evaluate` module).

The formulas are plain NumPy, GLUE-compatible (the test suite checks each against scikit-learn
and SciPy). Every F1 in ftcli, per label or micro/macro averaged, comes from `f1_from_counts`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ftcli.config import EvalConfig
from ftcli.errors import FtcliError

METRIC_SCRIPT = Path(__file__).parent / "glue_metric.py"
"""The `evaluate` module shipped with ftcli, loaded by path (works offline)."""


KINDS = {
    "accuracy": ("accuracy",),
    "accuracy_f1": ("accuracy", "f1"),
    "multiclass": ("accuracy", "f1_macro"),
    "matthews": ("matthews_correlation",),
    "regression": ("pearson", "spearmanr"),
    # Multi-label: predictions and references are rows x labels of 0/1.
    "multilabel": ("subset_accuracy", "precision_micro", "recall_micro", "f1_macro", "f1_micro"),
}


GLUE_TASKS = {
    "cola": "matthews", "sst2": "accuracy", "mrpc": "accuracy_f1", "qqp": "accuracy_f1",
    "stsb": "regression", "mnli": "accuracy", "mnli_mismatched": "accuracy", "mnli_matched": "accuracy",
    "qnli": "accuracy", "rte": "accuracy", "wnli": "accuracy", "hans": "accuracy", "ax": "accuracy",
}


def kind_of(config_name):
    if config_name in KINDS:
        return config_name
    if config_name in GLUE_TASKS:
        return GLUE_TASKS[config_name]
    raise KeyError(f"unknown metric config {config_name!r}; use one of {sorted(KINDS) + sorted(GLUE_TASKS)}")


def accuracy(p, r):
    return float((p == r).mean()) if len(r) else 0.0


def f1_from_counts(tp, fp, fn):
    """F1 = 2tp / (2tp + fp + fn), elementwise for arrays; 0 where a label is neither true nor
    predicted (scikit-learn's `zero_division=0`). Equal to the harmonic mean of precision and
    recall, without their 0/0 cases."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    denominator = 2 * tp + fp + fn
    return np.divide(2 * tp, denominator, out=np.zeros_like(denominator), where=denominator > 0)


def f1_binary(p, r):
    tp = int(((p == 1) & (r == 1)).sum())
    fp = int(((p == 1) & (r != 1)).sum())
    fn = int(((p != 1) & (r == 1)).sum())
    return float(f1_from_counts(tp, fp, fn))


def f1_macro(p, r):
    scores = []
    for label in np.union1d(p, r):
        scores.append(f1_binary((p == label).astype(int), (r == label).astype(int)))
    return float(np.mean(scores)) if scores else 0.0


def matthews(p, r):
    labels = np.union1d(p, r)
    idx = {v: i for i, v in enumerate(labels.tolist())}
    cm = np.zeros((len(labels), len(labels)), dtype=np.float64)
    np.add.at(cm, ([idx[v] for v in r.tolist()], [idx[v] for v in p.tolist()]), 1)
    t_sum, p_sum = cm.sum(axis=1), cm.sum(axis=0)
    n_correct, n = np.trace(cm), cm.sum()
    cov_tp = n_correct * n - t_sum @ p_sum
    cov_pp = n * n - p_sum @ p_sum
    cov_tt = n * n - t_sum @ t_sum
    denom = np.sqrt(cov_tt * cov_pp)
    return float(cov_tp / denom) if denom else 0.0


def pearson(x, y):
    x, y = x.astype(np.float64), y.astype(np.float64)
    xm, ym = x - x.mean(), y - y.mean()
    denom = np.sqrt((xm @ xm) * (ym @ ym))
    return float(xm @ ym / denom) if denom else float("nan")


def average_ranks(x):
    """Ranks 1..n, ties sharing their average rank (as scipy.stats.rankdata)."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[True, xs[1:] != xs[:-1]]
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.r_[first, len(x)])
    avg = first + (counts + 1) / 2.0
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = avg[group]
    return ranks


def spearman(x, y):
    return pearson(average_ranks(np.asarray(x)), average_ranks(np.asarray(y)))


def _counts(p, r):
    return int((p & r).sum()), int((p & (1 - r)).sum()), int(((1 - p) & r).sum())


def subset_accuracy(p, r):
    """Rows whose whole label set is right."""
    return float((p == r).all(axis=1).mean()) if len(r) else 0.0


def precision_micro(p, r):
    tp, fp, _ = _counts(p, r)
    return tp / (tp + fp) if tp + fp else 0.0


def recall_micro(p, r):
    tp, _, fn = _counts(p, r)
    return tp / (tp + fn) if tp + fn else 0.0


def f1_micro(p, r):
    return float(f1_from_counts(*_counts(p, r)))


def f1_macro_multilabel(p, r):
    """The mean of every label's F1 (a label never true nor predicted scores 0, as scikit-learn's
    zero_division=0)."""
    return float(np.mean([f1_micro(p[:, [k]], r[:, [k]]) for k in range(r.shape[1])])) if r.size else 0.0


MULTILABEL_FUNCTIONS = {
    "subset_accuracy": subset_accuracy, "precision_micro": precision_micro, "recall_micro": recall_micro,
    "f1_macro": f1_macro_multilabel, "f1_micro": f1_micro,
}


FUNCTIONS = {
    "accuracy": accuracy, "f1": f1_binary, "f1_macro": f1_macro,
    "matthews_correlation": matthews, "pearson": pearson, "spearmanr": spearman,
}


def per_label_scores(names: list[str], tp, fp, fn) -> dict[str, dict]:
    """Each label's precision, recall, F1 and support from its true positives, false positives
    and false negatives. A label never predicted has precision 0, one never true recall 0
    (scikit-learn's `zero_division=0`)."""
    tp, fp, fn = (np.asarray(x, dtype=np.float64) for x in (tp, fp, fn))
    zeros = np.zeros(len(names))
    precision = np.divide(tp, tp + fp, out=zeros.copy(), where=tp + fp > 0)
    recall = np.divide(tp, tp + fn, out=zeros.copy(), where=tp + fn > 0)
    f1 = f1_from_counts(tp, fp, fn)
    return {name: {"precision": round(float(precision[i]), 6), "recall": round(float(recall[i]), 6),
                   "f1": round(float(f1[i]), 6), "support": int(tp[i] + fn[i])}
            for i, name in enumerate(names)}


def metric_name(ev: EvalConfig, label_names: list[str], multi_label: bool = False) -> str:
    """The metric (a kind or GLUE task name) that `eval.metric` means for this data."""
    if multi_label:
        if ev.metric not in ("auto", "multilabel"):
            raise FtcliError(f"eval.metric: {ev.metric!r} scores one label per row, but this data is multi-label; "
                             "use auto or multilabel")
        return "multilabel"
    if ev.metric == "multilabel":
        raise FtcliError("eval.metric: multilabel needs multi-label data (label lists, or "
                         "model.problem_type: multi_label)")
    if ev.metric != "auto":
        return ev.metric
    if not label_names:
        return "regression"
    return "accuracy_f1" if len(label_names) == 2 else "multiclass"


def metric_keys(name: str) -> tuple[str, ...]:
    """The values metric `name` computes (e.g. accuracy, f1)."""
    return KINDS[kind_of(name)]


@dataclass(frozen=True)
class Metric:
    """Metric `name` over a split's gathered predictions: `compute(predictions=, references=)`, as
    an `evaluate` module's. ftcli gathers across processes itself (Accelerate's
    `gather_for_metrics`), so it calls the formulas directly: `import evaluate` costs ~1.5 s of a
    command's start-up (it imports transformers' pipelines). `evaluate_module` is the same metric
    for code built around `evaluate`; the tests check that the two agree."""

    name: str

    def compute(self, *, predictions, references) -> dict[str, float]:
        kind = kind_of(self.name)
        p, r = np.asarray(predictions), np.asarray(references)
        functions = MULTILABEL_FUNCTIONS if kind == "multilabel" else FUNCTIONS
        return {key: float(functions[key](p, r)) for key in KINDS[kind]}


def load_metric(name: str) -> Metric:
    kind_of(name)  # an unknown name fails here, not after the evaluation
    return Metric(name)


def evaluate_module(name: str):
    """The same metric as an `evaluate` module, loaded by path (offline). `keep_in_memory`:
    processes computing at once never share a cache file."""
    import evaluate

    return evaluate.load(str(METRIC_SCRIPT), name, keep_in_memory=True)
