"""Calibration error and temperature scaling (ftcli.evaluation.calibration), and the thresholds
`ftcli calibrate` tunes (ftcli.evaluation.thresholds), on synthetic scores with known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ftcli.errors import FtcliError
from ftcli.evaluation import (Calibration, Thresholds, confidences, decide, expected_calibration_error,
                              fit_temperature, load_calibration, read_thresholds, temperature_of, tune_binary,
                              tune_per_label)


def test_ece_by_hand():
    # bin 0.9-1.0: confidences 0.95, 0.95, right 1 of 2 -> gap 0.45; bin 0.6-0.7: 0.65, right -> gap 0.35
    confidence = np.array([0.95, 0.95, 0.65])
    correct = np.array([1.0, 0.0, 1.0])
    assert expected_calibration_error(confidence, correct, bins=10) == pytest.approx((2 * 0.45 + 0.35) / 3)
    assert expected_calibration_error(np.array([0.7, 0.7]), np.array([1.0, 0.0]) * 0 + 0.7, bins=10) == \
        pytest.approx(0.0)
    assert expected_calibration_error(np.zeros(0), np.zeros(0)) == 0.0


def test_confidences_single_and_multi_label():
    scores = np.array([[0.2, 0.8], [0.6, 0.4]])
    conf, right = confidences(scores, np.array([1, 1]), multi_label=False)
    assert conf.tolist() == [0.8, 0.6] and right.tolist() == [1.0, 0.0]
    conf, right = confidences(scores, np.array([[0, 1], [1, 1]]), multi_label=True)
    assert conf.tolist() == [0.2, 0.8, 0.6, 0.4] and right.tolist() == [0.0, 1.0, 1.0, 1.0]


def _sampled(n=4000, temperature=3.0, labels=3, seed=0):
    """Labels drawn from softmax(z / T): logits z that are over-confident by a factor T."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0, 4, size=(n, labels))
    p = np.exp(z / temperature)
    p /= p.sum(1, keepdims=True)
    y = np.array([rng.choice(labels, p=row) for row in p])
    return torch.tensor(z), torch.tensor(y)


def test_fit_temperature_recovers_the_true_temperature_and_lowers_ece():
    logits, labels = _sampled()
    t = fit_temperature(logits, labels, multi_label=False)
    assert t == pytest.approx(3.0, rel=0.1)
    probs = lambda temp: torch.softmax(logits / temp, -1).numpy()  # noqa: E731
    before = expected_calibration_error(*confidences(probs(1.0), labels.numpy(), False))
    after = expected_calibration_error(*confidences(probs(t), labels.numpy(), False))
    assert before > 0.15 and after < 0.03


def test_fit_temperature_multi_label_and_windows_pool_probabilities():
    rng = np.random.default_rng(1)
    z = torch.tensor(rng.normal(0, 5, size=(3000, 2)))
    y = torch.tensor((rng.random((3000, 2)) < torch.sigmoid(z / 2.5).numpy()).astype(np.int64))
    assert fit_temperature(z, y, multi_label=True) == pytest.approx(2.5, rel=0.1)
    # each document read in two identical windows: pooling them changes nothing
    windows, documents = torch.cat([z, z]), torch.cat([torch.arange(3000), torch.arange(3000)])
    assert fit_temperature(windows, y, True, documents, "mean") == pytest.approx(fit_temperature(z, y, True), rel=1e-4)  # pooled in float32


def test_calibration_file_round_trip_and_bad_files(tmp_path):
    assert load_calibration(tmp_path) is None and temperature_of(tmp_path) == 1.0
    Calibration(temperature=2.5, ece_before=0.2, ece_after=0.02, nll_before=1.0, nll_after=0.5, split="validation",
                rows=10, bins=15).save(tmp_path)
    assert temperature_of(tmp_path) == 2.5
    (tmp_path / "calibration.json").write_text(json.dumps({"temperature": -1}))
    with pytest.raises(FtcliError, match="calibration.json: unreadable or not a positive temperature"):
        load_calibration(tmp_path)


def test_per_label_thresholds_beat_one_half_where_scores_are_shifted():
    """Label a's positives score 0.2-0.4 (below 0.5), label b's negatives 0.55-0.7 (above it):
    each needs its own threshold, and a shared 0.5 gets both wrong."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, size=(400, 2))
    a = np.where(y[:, 0] == 1, rng.uniform(0.2, 0.4, 400), rng.uniform(0.0, 0.15, 400))
    b = np.where(y[:, 1] == 1, rng.uniform(0.8, 1.0, 400), rng.uniform(0.55, 0.7, 400))
    scores = np.stack([a, b], 1)
    t = tune_per_label(scores, y)
    assert 0.15 <= t[0] <= 0.2 and 0.7 <= t[1] <= 0.8
    from ftcli.evaluation.metrics import f1_micro

    tuned = f1_micro(decide(scores, Thresholds(t, "tuned"), True), y)
    half = f1_micro(decide(scores, Thresholds((0.5, 0.5), "default"), True), y)
    assert tuned == 1.0 and half < 0.75
    # a label no row carries keeps 0.5
    assert tune_per_label(scores, np.stack([y[:, 0], np.zeros(400, int)], 1))[1] == 0.5


def test_binary_threshold_for_the_named_metric():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 500)
    p1 = np.where(y == 1, rng.uniform(0.3, 0.45, 500), rng.uniform(0.05, 0.28, 500))
    scores = np.stack([1 - p1, p1], 1)
    t = tune_binary(scores, y, "f1")
    assert 0.28 <= t <= 0.3
    assert (decide(scores, Thresholds((t,), "tuned"), False) == y).all()
    assert (decide(scores, Thresholds(None, "default"), False) == 0).all()  # argmax: never the positive label
    with pytest.raises(FtcliError, match="--metric 'auc'"):
        tune_binary(scores, y, "auc")


def test_saved_thresholds_are_read_for_the_model_they_fit(tmp_path):
    (tmp_path / "thresholds.json").write_text(json.dumps({"kind": "per_label", "thresholds": {"a": 0.3, "b": 0.7}}))
    assert read_thresholds(tmp_path, ["a", "b"], True).values == (0.3, 0.7)
    with pytest.raises(FtcliError, match="no threshold for 'c'"):
        read_thresholds(tmp_path, ["a", "c"], True)
    # eval --save-threshold's file (no kind): one threshold for every label
    (tmp_path / "thresholds.json").write_text(json.dumps({"threshold": 0.35, "f1_micro": 0.9}))
    assert read_thresholds(tmp_path, ["a", "b", "c"], True).values == (0.35,) * 3
    with pytest.raises(FtcliError, match="multi-label threshold but the model is single-label"):
        read_thresholds(tmp_path, ["no", "yes"], False)
    (tmp_path / "thresholds.json").write_text(json.dumps({"kind": "binary", "threshold": 1.5}))
    with pytest.raises(FtcliError, match="not between 0 and 1"):
        read_thresholds(tmp_path, ["no", "yes"], False)
