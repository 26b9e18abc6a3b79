"""Model and tokenizer loading from the config."""

from __future__ import annotations

import pytest
import torch

from conftest import config_dict
from ftcli import modeling
from ftcli.config import config_from_dict
from ftcli.errors import FtcliError


def test_fresh_head_with_labels_and_fp32_master_weights_from_a_bf16_checkpoint(tiny_model, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    bf16 = tmp_path / "bf16"
    AutoModel.from_pretrained(tiny_model).to(torch.bfloat16).save_pretrained(bf16)
    AutoTokenizer.from_pretrained(tiny_model).save_pretrained(bf16)
    cfg = config_from_dict(config_dict(bf16, {"train": tmp_path / "t.jsonl"}, tmp_path))
    model = modeling.load_model(cfg.model, ["no", "yes"])
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model.config.id2label == {0: "no", 1: "yes"} and model.num_labels == 2


def test_regression_head(tiny_model, tmp_path):
    cfg = config_from_dict(config_dict(tiny_model, {"train": tmp_path / "t.jsonl"}, tmp_path))
    model = modeling.load_model(cfg.model, [])
    assert model.num_labels == 1 and model.config.problem_type == "regression"


def test_trained_model_must_match_the_data_labels(tiny_classifier):
    modeling.load_trained(tiny_classifier, ["no", "yes"])
    with pytest.raises(FtcliError, match=r"predicts labels \['no', 'yes'\] but the data's labels are \['neg', 'pos'\]"):
        modeling.load_trained(tiny_classifier, ["neg", "pos"])
    # [] means regression data: a two-label classifier must not pass as a regression model.
    with pytest.raises(FtcliError, match=r"predicts labels \['no', 'yes'\] but the data's a regression target"):
        modeling.load_trained(tiny_classifier, [])


def test_remote_code_is_off_unless_asked(tiny_model, tmp_path, monkeypatch):
    seen = {}

    def fake(source, **kwargs):
        seen.update(kwargs)
        raise OSError("stop here")

    from transformers import AutoModelForSequenceClassification

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", fake)
    cfg = config_from_dict(config_dict(tiny_model, {"train": tmp_path / "t.jsonl"}, tmp_path))
    with pytest.raises(FtcliError, match="cannot load a model"):
        modeling.load_model(cfg.model, ["no", "yes"])
    assert seen["trust_remote_code"] is False
    cfg = config_from_dict(config_dict(tiny_model, {"train": tmp_path / "t.jsonl"}, tmp_path),
                           ["model.trust_remote_code=true"])
    with pytest.raises(FtcliError):
        modeling.load_model(cfg.model, ["no", "yes"])
    assert seen["trust_remote_code"] is True
