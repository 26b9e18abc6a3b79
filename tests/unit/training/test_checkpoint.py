"""Checkpoint compatibility and the field policy it reads, tested directly (the kill-and-resume
runs are in tests/integration/test_resume.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftcli.config import config_from_dict, keys_with, policy_of
from ftcli.errors import FtcliError
from ftcli.training.checkpoint import check_compatible
from ftcli.training.state import Fingerprint

BASE = {"model": {"name_or_path": "m", "labels": ["a", "b"]}, "data": {"files": {"train": "t.jsonl"}}}


def fingerprint(*sets: str, data_key: str = "k1", step_batch: int = 8) -> Fingerprint:
    return Fingerprint(config_from_dict(BASE, list(sets)).to_dict(), data_key, step_batch)


def test_resume_accepts_changes_the_policy_allows():
    saved = fingerprint()
    check_compatible(saved, fingerprint("train.log_every=1", "train.output_dir=elsewhere",
                                        "train.checkpoint_every=3", "eval.split=test", "train.eval_batch_size=2"),
                     Path("ckpt"))


def test_resume_refuses_what_changes_the_training_naming_each_difference():
    saved = fingerprint()
    with pytest.raises(FtcliError) as caught:
        check_compatible(saved, fingerprint("train.learning_rate=0.001", "train.seed=7", data_key="k2",
                                            step_batch=16), Path("runs/x/checkpoints/step-0000010"))
    text = str(caught.value)
    assert text.startswith("checkpoint runs/x/checkpoints/step-0000010 was written by a different run: ")
    assert "train.learning_rate (5e-05 -> 0.001)" in text and "train.seed (42 -> 7)" in text
    assert "the prepared data (cache key k1 -> k2)" in text and "the global batch (8 -> 16;" in text
    assert text.endswith("pass --allow-changes to resume anyway")


def test_settings_newer_than_the_checkpoint_agree():
    old = fingerprint()
    older = Fingerprint({k: v for k, v in old.config.items() if k != "eval"}, old.data_key, old.step_batch)
    check_compatible(older, fingerprint("eval.threshold=0.3"), Path("ckpt"))


def test_field_policy_is_read_from_the_fields():
    may_change = keys_with("may_change_on_resume")
    assert {"train.log_every", "train.output_dir", "data.cache_dir", "eval.metric", "train.batch_size"} <= may_change
    assert not may_change & {"train.learning_rate", "train.seed", "model.name_or_path", "data.max_length"}
    assert policy_of("sweep.trials").may_change_on_resume  # a section's policy covers its settings
    assert policy_of("sweep.space.train.learning_rate.low").may_change_on_resume
    assert not policy_of("data.files.train").may_change_on_resume  # other data is another run
    assert keys_with("searchable", False) == {"model.name_or_path", "data.path", "data.files", "data.cache_dir",
                                             "train.output_dir"}
    assert policy_of("no.such.key") == policy_of("train.seed")  # the default policy
