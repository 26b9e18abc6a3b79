"""The typed training state and its versioned JSON (what a checkpoint's ftcli_state.json holds)."""

from __future__ import annotations

import json

import pytest

from ftcli.errors import FtcliError
from ftcli.training.state import STATE_VERSION, Best, CheckpointRecord, Fingerprint, TrainState


def test_round_trip_through_json():
    state = TrainState(step=12, epoch=1, batch_in_epoch=3, samples=96, tokens=1234, padded_tokens=1500,
                       seconds=4.5, bad_evals=1, best=Best("f1", 0.8, 10, "step-0000010", {"f1": 0.8, "loss": 0.4}),
                       last_eval={"type": "eval", "step": 12, "f1": 0.7})
    record = CheckpointRecord(state, Fingerprint({"train": {"seed": 1}}, "abc", 8), {"model.safetensors": [10, "d"]})
    text = json.dumps(record.to_json())
    back = CheckpointRecord.from_json(json.loads(text), "here")
    assert back == record and json.loads(text)["version"] == STATE_VERSION


def test_version_1_checkpoints_still_load():
    """ftcli 0.1 wrote the state's keys at the top level, and called the step batch global_batch."""
    v1 = {"format": 1, "step": 20, "epoch": 1, "batch_in_epoch": 8, "samples": 160, "tokens": 2000,
          "bad_evals": 0, "padded_tokens": 2400, "seconds": 3.0,
          "best": {"metric": "loss", "value": 0.5, "step": 15, "checkpoint": "step-0000015", "eval": {"loss": 0.5}},
          "last_eval": None, "fingerprint": {"config": {"train": {}}, "data_key": "k", "global_batch": 8},
          "files": {"a": [1, "x"]}}
    record = CheckpointRecord.from_json(v1, "old")
    assert record.state.step == 20 and record.state.best == Best("loss", 0.5, 15, "step-0000015", {"loss": 0.5})
    assert record.fingerprint == Fingerprint({"train": {}}, "k", 8) and record.files == {"a": [1, "x"]}


def test_an_unknown_version_is_refused_by_name():
    with pytest.raises(FtcliError, match=r"checkpoint x: written by another ftcli \(state version 9"):
        CheckpointRecord.from_json({"version": 9, "state": {}}, "checkpoint x")
