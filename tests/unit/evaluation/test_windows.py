"""ftcli.evaluation.windows: a document's windows pooled into one prediction, by hand-checked
arithmetic; and run_eval's metrics, computed per document."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ftcli.evaluation.windows import pool

# windows of documents 2, 0, 2, 1, 0, 2 (as gathered: not in document order)
DOCUMENTS = torch.tensor([2, 0, 2, 1, 0, 2])
LOGITS = torch.tensor([[1.0, -2.0], [0.5, 0.0], [0.0, 3.0], [0.0, 4.0], [1.5, 1.0], [1.0, -2.0]])


def test_mean_pooling_averages_each_documents_windows():
    pooled = pool(LOGITS, DOCUMENTS, "mean")
    assert pooled.documents.tolist() == [0, 1, 2]
    assert pooled.windows.tolist() == [2, 1, 3]
    # document 0: (0.5 + 1.5) / 2, (0 + 1) / 2; document 1: as is; document 2: (1 + 0 + 1) / 3, (-2 + 3 - 2) / 3
    assert pooled.values.numpy() == pytest.approx(np.array([[1.0, 0.5], [0.0, 4.0], [2 / 3, -1 / 3]]))
    assert pooled.first.tolist() == [1, 3, 0]  # each document's first window as given


def test_max_pooling_takes_each_outputs_largest_window():
    pooled = pool(LOGITS, DOCUMENTS, "max")
    assert pooled.values.tolist() == [[1.5, 1.0], [0.0, 4.0], [1.0, 3.0]]  # per label, not per window


def test_multi_label_probabilities_pool_per_label():
    probs = torch.tensor([[0.9, 0.1, 0.2], [0.1, 0.1, 0.6], [0.3, 0.4, 0.2]])
    documents = torch.tensor([5, 5, 7])
    assert pool(probs, documents, "mean").values.numpy() == pytest.approx(np.array([[0.5, 0.1, 0.4], [0.3, 0.4, 0.2]]))
    assert pool(probs, documents, "max").values.numpy() == pytest.approx(np.array([[0.9, 0.1, 0.6], [0.3, 0.4, 0.2]]))


def test_pooling_does_not_depend_on_the_order_documents_come_in():
    order = torch.tensor([5, 3, 0, 4, 1, 2])
    for how in ("mean", "max"):
        assert pool(LOGITS[order], DOCUMENTS[order], how).values.numpy() == \
            pytest.approx(pool(LOGITS, DOCUMENTS, how).values.numpy())


def test_an_unknown_pooling_is_refused():
    with pytest.raises(ValueError, match="pooling 'sum'"):
        pool(LOGITS, DOCUMENTS, "sum")


class _Model(torch.nn.Module):
    """Returns the logits a batch carries in `input_ids`' first column's row (a lookup)."""

    def __init__(self, table):
        super().__init__()
        self.table = table

    def forward(self, input_ids, attention_mask=None):
        from types import SimpleNamespace

        return SimpleNamespace(logits=self.table[input_ids[:, 0]])


class _Accelerator:
    @staticmethod
    def autocast():
        import contextlib

        return contextlib.nullcontext()

    @staticmethod
    def gather_for_metrics(x):
        return x


def _batches(documents, labels, size):
    for lo in range(0, len(documents), size):
        yield {"input_ids": torch.arange(lo, min(lo + size, len(documents))).unsqueeze(1),
               "attention_mask": torch.ones(min(size, len(documents) - lo), 1, dtype=torch.long),
               "labels": labels[lo:lo + size], "documents": documents[lo:lo + size]}


@pytest.mark.parametrize("how, expected", [("mean", [0, 1, 0]), ("max", [0, 1, 1])])
def test_run_eval_scores_documents_not_windows(how, expected):
    from ftcli.evaluation import load_metric, run_eval

    labels = torch.tensor([1, 0, 1, 1, 0, 1])  # every window carries its document's label
    result = run_eval(_Accelerator(), _Model(LOGITS), list(_batches(DOCUMENTS, labels, 4)), load_metric("accuracy_f1"),
                      regression=False, keep_predictions=True, keep_outputs=True, pooling=how)
    assert result.rows == 3 and result.windows.tolist() == [2, 1, 3]
    assert result.predictions.tolist() == expected
    assert result.references.tolist() == [0, 1, 1]
    pooled = pool(LOGITS, DOCUMENTS, how).values
    assert result.scores == pytest.approx(torch.softmax(pooled, -1).numpy())
    loss = torch.nn.functional.cross_entropy(pooled, torch.tensor([0, 1, 1])).item()
    assert result.metrics["loss"] == pytest.approx(loss)
    assert result.metrics["accuracy"] == pytest.approx(np.mean(np.array(expected) == [0, 1, 1]))
    assert result.values()["samples"] == 3 and result.values()["windows"] == 6
    assert result.row_ids.tolist() == [0, 1, 2]


def test_run_eval_pools_multi_label_probabilities_and_thresholds_them():
    from ftcli.evaluation import load_metric, run_eval

    logits = torch.tensor([[2.0, -2.0], [-1.0, -2.0], [-1.0, 3.0]])
    documents = torch.tensor([0, 0, 1])
    labels = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    result = run_eval(_Accelerator(), _Model(logits), list(_batches(documents, labels, 2)), load_metric("multilabel"),
                      regression=False, multi_label=True, keep_predictions=True, threshold=0.5, pooling="mean")
    probs = torch.sigmoid(logits)
    document0 = (probs[0] + probs[1]) / 2  # label 0: (0.881 + 0.269) / 2 = 0.575; sigmoid of the mean logit: 0.622
    assert result.scores == pytest.approx(torch.stack([document0, probs[2]]).numpy())
    assert result.predictions.tolist() == [[1, 0], [0, 1]]
    expected = torch.nn.functional.binary_cross_entropy(torch.stack([document0, probs[2]]).double(),
                                                        torch.tensor([[1.0, 0.0], [0.0, 1.0]]).double())
    assert result.metrics["loss"] == pytest.approx(expected.item())


def test_run_eval_pools_regression_values():
    from ftcli.evaluation import load_metric, run_eval

    values = torch.tensor([[1.0], [3.0], [-1.0], [0.5]])
    documents = torch.tensor([0, 0, 1, 2])
    labels = torch.tensor([2.0, 2.0, 0.0, 1.0])
    result = run_eval(_Accelerator(), _Model(values), list(_batches(documents, labels, 3)), load_metric("regression"),
                      regression=True, keep_outputs=True, pooling="max")
    assert result.logits.squeeze(-1).tolist() == [3.0, -1.0, 0.5]
    assert result.metrics["loss"] == pytest.approx(((3 - 2) ** 2 + 1 + 0.25) / 3)
