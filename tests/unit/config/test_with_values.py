"""`with_values`: the one way a command makes a variant of the config, validated."""

from __future__ import annotations

import pytest

from ftcli.config import config_from_dict, with_values
from ftcli.errors import FtcliError

BASE = {"model": {"name_or_path": "m", "labels": ["a", "b"]}, "data": {"files": {"train": "t.jsonl"}}}


def test_with_values_replaces_settings_and_keeps_the_rest():
    cfg = config_from_dict(BASE, ["train.epochs=2"], source="c.yaml")
    new = with_values(cfg, {"train.output_dir": "runs/t3", "data.files": {"predict": "p.csv"}, "sweep": None},
                      origin="predict")
    assert new.train.output_dir == "runs/t3" and new.data.files == {"predict": "p.csv"}
    assert new.train.epochs == 2 and new.source_path == "c.yaml"
    assert new.origin("train.epochs") == "--set" and new.origin("model.name_or_path") == "file"
    assert new.origin("train.output_dir") == "predict" and new.origin("data.files") == "predict"
    assert cfg.train.output_dir != "runs/t3" and cfg.data.files == {"train": "t.jsonl"}  # the original is untouched


def test_with_values_validates_like_a_loaded_config():
    cfg = config_from_dict(BASE)
    with pytest.raises(FtcliError, match=r"train.epochs: Input should be greater than or equal to 1"):
        with_values(cfg, {"train.epochs": 0})
    with pytest.raises(FtcliError, match=r"unknown key"):
        with_values(cfg, {"train.epoch": 3})
    with pytest.raises(FtcliError, match=r"train.epochs.x: train.epochs is not a section"):
        with_values(cfg, {"train.epochs.x": 3})
