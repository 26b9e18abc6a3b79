"""GLUE-compatible metrics as an `evaluate` module, shipped inside ftcli.

`evaluate.load("glue", task)` downloads its script from the Hugging Face Hub; this module gives
the same numbers offline and is loaded by path (`ftcli.evaluation.load_metric`). Config names are
GLUE task names (`mrpc`, `cola`, `stsb`, ...) or kinds (`accuracy`, `accuracy_f1`, `multiclass`,
`matthews`, `regression`, and `multilabel` for rows x labels of 0/1). Plain NumPy, so that no scikit-learn or SciPy import is needed; the
test suite checks every formula against scikit-learn and SciPy.
"""

import datasets
import evaluate
import numpy as np

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

_DESCRIPTION = "GLUE metrics (accuracy, F1, Matthews correlation, Pearson/Spearman), computed offline."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted label ids (floats for `regression`/`stsb`).
    references: true label ids (floats for `regression`/`stsb`).
Returns: a dict with the metrics of the config, e.g. {"accuracy": 0.84, "f1": 0.89} for `mrpc`.
"""


def kind_of(config_name):
    if config_name in KINDS:
        return config_name
    if config_name in GLUE_TASKS:
        return GLUE_TASKS[config_name]
    raise KeyError(f"unknown metric config {config_name!r}; use one of {sorted(KINDS) + sorted(GLUE_TASKS)}")


def accuracy(p, r):
    return float((p == r).mean()) if len(r) else 0.0


def f1_binary(p, r):
    tp = int(((p == 1) & (r == 1)).sum())
    fp = int(((p == 1) & (r != 1)).sum())
    fn = int(((p != 1) & (r == 1)).sum())
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


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
    tp, fp, fn = _counts(p, r)
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0


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


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FtcliGlue(evaluate.Metric):
    def _info(self):
        kind = kind_of(self.config_name)
        value = datasets.Value("float32" if kind == "regression" else "int64")
        if kind == "multilabel":
            value = datasets.Sequence(datasets.Value("int64"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Wang et al., GLUE: A Multi-Task Benchmark and Analysis Platform for NLU, ICLR 2019.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": value, "references": value}),
            format=None if kind == "multilabel" else "numpy",  # evaluate's numpy format takes scalars only
        )

    def _compute(self, predictions, references):
        kind = kind_of(self.config_name)
        p, r = np.asarray(predictions), np.asarray(references)
        functions = MULTILABEL_FUNCTIONS if kind == "multilabel" else FUNCTIONS
        return {name: functions[name](p, r) for name in KINDS[kind]}
