"""Batching: the length-grouped and sorted samplers, and the collator's shapes."""

from __future__ import annotations

import numpy as np
import pytest

from ftcli.data import batching


def test_length_grouped_sampler_is_seeded_per_epoch_and_groups_lengths():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 100, size=1000)
    s = batching.LengthGroupedSampler(lengths, micro_batch=8, seed=3)
    e0, e0_again, e1 = s.order(0), s.order(0), s.order(1)
    assert sorted(e0.tolist()) == list(range(1000))
    assert (e0 == e0_again).all() and not (e0 == e1).all()
    s.set_epoch(1)
    assert list(s) == e1.tolist()
    # Each megabatch (8 x 50 rows) is sorted longest first.
    for start in range(0, 1000, 400):
        chunk = lengths[e0[start:start + 400]]
        assert (np.diff(chunk) <= 0).all()

    def padding(order):
        batches = [lengths[order[i:i + 8]] for i in range(0, len(order), 8)]
        return sum(b.max() * len(b) - b.sum() for b in batches)

    plain = batching.LengthGroupedSampler(lengths, micro_batch=8, seed=3, group=False).order(0)
    assert padding(e0) < 0.1 * padding(plain)


def test_sorted_sampler_is_longest_first():
    assert list(batching.SortedSampler([3, 9, 1, 9])) == [1, 3, 0, 2]


def rows_of(lengths):
    return [{"input_ids": list(range(1, n + 1)), "attention_mask": [1] * n, "token_type_ids": [0] * n,
             "length": n, "labels": i % 2, "row_id": i} for i, n in enumerate(lengths)]


@pytest.mark.parametrize("kwargs, width", [
    ({}, 13),
    ({"multiple_of": 8}, 16),
    ({"padding": "max_length", "max_length": 40}, 40),
    ({"padding": "buckets", "buckets": (8, 16, 32), "max_length": 64}, 16),
    ({"padding": "buckets", "buckets": (8,), "max_length": 20}, 20),
])
def test_collator_shapes(kwargs, width):
    batch = batching.Collator(pad_token_id=0, **kwargs)(rows_of([5, 13, 2]))
    assert batch["input_ids"].shape == (3, width)
    assert batch["attention_mask"].sum(1).tolist() == [5, 13, 2]
    assert batch["input_ids"][0, 5:].eq(0).all() and batch["input_ids"][0, :5].tolist() == [1, 2, 3, 4, 5]
    assert batch["labels"].tolist() == [0, 1, 0] and "row_ids" not in batch


def test_collator_static_shapes_for_xla():
    """Under XLA every distinct shape recompiles: buckets give a handful of shapes only."""
    collate = batching.Collator(pad_token_id=0, padding="buckets", buckets=(32, 64, 128), max_length=128)
    rng = np.random.default_rng(1)
    shapes = {tuple(collate(rows_of(rng.integers(1, 128, size=4).tolist()))["input_ids"].shape) for _ in range(50)}
    assert shapes <= {(4, 32), (4, 64), (4, 128)}


def test_collator_row_ids_and_regression_labels():
    batch = batching.Collator(pad_token_id=0, with_row_ids=True, regression=True)(rows_of([2, 3]))
    assert batch["row_ids"].tolist() == [0, 1]
    assert batch["labels"].dtype.is_floating_point


def test_document_weights_give_each_document_one_rows_weight_with_mean_one():
    documents = [0, 0, 0, 1, 2, 2]  # 3 documents in 6 windows: a mean window weighs 1
    weights = batching.document_weights(documents)
    assert weights.tolist() == pytest.approx([2 / 3, 2 / 3, 2 / 3, 2.0, 1.0, 1.0])
    assert weights.mean() == pytest.approx(1.0)
    assert [weights[[0, 1, 2]].sum(), weights[3], weights[[4, 5]].sum()] == pytest.approx([2.0, 2.0, 2.0])


def test_collator_carries_documents_and_weights():
    rows = [{**r, "document": d, "weight": w} for r, d, w in zip(rows_of([2, 3]), [4, 4], [0.5, 0.5])]
    batch = batching.Collator(pad_token_id=0)(rows)
    assert batch["documents"].tolist() == [4, 4] and batch["weights"].tolist() == [0.5, 0.5]
    assert "documents" not in batching.Collator(pad_token_id=0)(rows_of([2, 3]))
