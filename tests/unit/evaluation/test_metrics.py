"""The shipped GLUE-compatible metric module, checked against scikit-learn and SciPy, and loaded
through `evaluate` offline."""

from __future__ import annotations

import numpy as np
import pytest

from ftcli.evaluation import evaluate_module, load_metric
from ftcli.evaluation import metrics as glue

sklearn_metrics = pytest.importorskip("sklearn.metrics")
stats = pytest.importorskip("scipy.stats")


@pytest.fixture(params=range(6))
def labels(request):
    rng = np.random.default_rng(request.param)
    n, k = int(rng.integers(5, 300)), int(rng.integers(2, 5))
    refs = rng.integers(0, k, size=n)
    preds = np.where(rng.random(n) < 0.7, refs, rng.integers(0, k, size=n))
    return preds, refs


def test_classification_metrics_match_sklearn(labels):
    p, r = labels
    assert glue.accuracy(p, r) == pytest.approx(sklearn_metrics.accuracy_score(r, p), abs=1e-12)
    assert glue.matthews(p, r) == pytest.approx(sklearn_metrics.matthews_corrcoef(r, p), abs=1e-12)
    assert glue.f1_macro(p, r) == pytest.approx(sklearn_metrics.f1_score(r, p, average="macro"), abs=1e-12)
    pb, rb = (p == 1).astype(int), (r == 1).astype(int)
    assert glue.f1_binary(pb, rb) == pytest.approx(sklearn_metrics.f1_score(rb, pb), abs=1e-12)


def test_correlations_match_scipy():
    rng = np.random.default_rng(0)
    x = rng.normal(size=200)
    y = x + rng.normal(size=200)
    y_ties = np.round(y)  # many ties: average ranks matter
    assert glue.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], abs=1e-12)
    assert glue.spearman(x, y_ties) == pytest.approx(stats.spearmanr(x, y_ties)[0], abs=1e-12)
    assert (glue.average_ranks(np.array([3, 1, 3, 2])) == stats.rankdata([3, 1, 3, 2])).all()


def test_degenerate_inputs():
    assert glue.f1_binary(np.zeros(4, int), np.zeros(4, int)) == 0.0  # no positives: sklearn's zero_division=0
    assert glue.matthews(np.ones(4, int), np.ones(4, int)) == 0.0


@pytest.mark.parametrize("name, keys", [
    ("mrpc", {"accuracy", "f1"}), ("qqp", {"accuracy", "f1"}), ("cola", {"matthews_correlation"}),
    ("sst2", {"accuracy"}), ("multiclass", {"accuracy", "f1_macro"}), ("stsb", {"pearson", "spearmanr"}),
])
def test_the_metric_and_the_evaluate_module_agree(name, keys):
    """What ftcli computes (`load_metric`) is what the `evaluate` module gives, offline."""
    module = evaluate_module(name)
    if name == "stsb":
        p, r = np.float32([0.1, 0.4, 0.35, 0.8]), np.float32([0.0, 0.5, 0.3, 0.9])
        result = module.compute(predictions=p, references=r)
    else:
        module.add_batch(predictions=[1, 0, 1], references=[1, 0, 0])
        result = module.compute(predictions=[1], references=[1])
        p, r = np.array([1, 0, 1, 1]), np.array([1, 0, 0, 1])
    assert set(result) == keys
    assert load_metric(name).compute(predictions=p, references=r) == pytest.approx(result, rel=1e-6)
    if name in ("mrpc", "qqp"):
        assert result == {"accuracy": 0.75, "f1": pytest.approx(0.8)}


def test_multi_label_metric_agrees_with_the_evaluate_module():
    p, r = np.array([[1, 0, 1], [0, 0, 1], [1, 1, 0]]), np.array([[1, 0, 0], [0, 1, 1], [1, 1, 0]])
    direct = load_metric("multilabel").compute(predictions=p, references=r)
    assert direct == pytest.approx(evaluate_module("multilabel").compute(predictions=p, references=r), rel=1e-9)
    assert direct["f1_micro"] == pytest.approx(sklearn_metrics.f1_score(r, p, average="micro"))


def test_unknown_metric_config():
    with pytest.raises(KeyError, match="unknown metric config 'bleu'"):
        glue.kind_of("bleu")
