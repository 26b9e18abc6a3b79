"""Every tested model family, end to end through the CLI: train a few steps, `eval` equals train's
final evaluation, eval and predict at batch 1 equal batch 64, predict works, and the fast CPU path
is proven equal or declined. Tiny random models with tokenizers trained here (tests/families.py)."""

from __future__ import annotations

import json

import pytest
import yaml

import families
from conftest import config_dict, run_here

pytestmark = pytest.mark.slow

# Where ftcli's fast CPU attention is proven equal to the model's own, and where it is declined
# (and why): the README's "Models" table says the same.
FAST_PATH = {"bert": True, "roberta": True, "deberta-v2": None, "modernbert": True, "t5": False, "gpt2": True,
             "llama": True, "qwen2": True}
# None: DeBERTa-v2 does not use transformers' attention interface; only its dropout is swapped.

PAD = {"gpt2": "the tokenizer's EOS token", "llama": "the tokenizer's EOS token"}


def _config(tmp_path, model, files, **train) -> tuple[dict, object]:
    cfg = config_dict(model, files, tmp_path, **{"epochs": 1, "eval_batch_size": 64, **train})
    del cfg["data"]["max_length"]  # the default: the tokenizer's and the model's limits decide
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return cfg, path


def _predictions(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("family", families.FAMILIES)
def test_family_trains_evaluates_and_predicts(family, task_files, tmp_path):
    _check_family(family, families.build(family, tmp_path / family), task_files, tmp_path)


def test_a_pad_id_only_the_model_config_knows_is_the_one_padded_with(task_files, tmp_path):
    """Once the collator padded with 0 while the head pooled by the config's pad id: the head then
    pooled at padding, and results changed with the batch."""
    model = families.build("llama", tmp_path / "llama")
    config = json.loads((model / "config.json").read_text())
    config["pad_token_id"] = 0  # <unk>: the tokenizer has no pad token
    (model / "config.json").write_text(json.dumps(config))
    PAD["llama-config-pad"] = "the model config's pad_token_id"
    _check_family("llama-config-pad", model, task_files, tmp_path)


def _check_family(family, model, task_files, tmp_path):
    cfg, path = _config(tmp_path, model, task_files)

    trained = run_here("train", "-c", str(path), "--json")
    assert trained.returncode == 0, trained.stderr
    result = json.loads(trained.stdout)
    assert result["steps"] == 12 and result["eval"]["samples"] == 40
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["max_length"] == 64  # the model's 64 positions, not the tokenizer's 1e30 (GPT-2)
    if FAST_PATH.get(family, True) is False:
        assert f"fast CPU attention declined for {family}" in trained.stderr
    else:
        assert "declined" not in trained.stderr, trained.stderr
    assert "pad token" in trained.stderr
    if family in PAD:
        assert PAD[family] in trained.stderr

    # The exported model and tokenizer pad with the id the data was padded with.
    from transformers import AutoConfig, AutoTokenizer

    manifest = json.loads(next((tmp_path / "cache").glob("*/manifest.json")).read_text())
    exported = AutoConfig.from_pretrained(tmp_path / "run" / "model")
    assert exported.pad_token_id == manifest["pad_token_id"]
    assert AutoTokenizer.from_pretrained(tmp_path / "run" / "model").pad_token_id == manifest["pad_token_id"]

    ev = {}
    for batch in (1, 64):
        out = run_here("eval", "-c", str(path), "--set", f"train.eval_batch_size={batch}", "--json")
        assert out.returncode == 0, out.stderr
        ev[batch] = json.loads(out.stdout)
    for k in ("accuracy", "f1"):
        assert ev[64][k] == result["eval"][k]  # the model train evaluated, with the same kernels
        assert ev[1][k] == ev[64][k]  # batching (and so padding) changes nothing
    assert ev[1]["loss"] == pytest.approx(ev[64]["loss"], rel=1e-5)
    assert ev[64]["loss"] == pytest.approx(result["eval"]["loss"], rel=1e-6)

    probs = {}
    for batch in (1, 64):
        out_file = tmp_path / f"pred{batch}.jsonl"
        out = run_here("predict", "-c", str(path), "--input", str(task_files["validation"]), "--output",
                       str(out_file), "--set", f"train.eval_batch_size={batch}")
        assert out.returncode == 0, out.stderr
        rows = _predictions(out_file)
        assert len(rows) == 40 and [r["row"] for r in rows] == list(range(40))
        probs[batch] = [r["probabilities"]["yes"] for r in rows]
    assert probs[1] == pytest.approx(probs[64], abs=2e-6)


def test_t5_trains_its_relative_position_bias(task_files, tmp_path):
    """The fast path once dropped T5's position bias, which then never moved: it must train."""
    import torch
    from safetensors.torch import load_file

    model = families.build("t5", tmp_path / "t5")
    _, path = _config(tmp_path, model, task_files, max_steps=3)
    assert run_here("train", "-c", str(path)).returncode == 0
    key = "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    before = load_file(model / "model.safetensors")[key]
    after = load_file(tmp_path / "run" / "model" / "model.safetensors")[f"transformer.{key}"]
    assert not torch.equal(before, after)


def _fake_size(folder, parameters: int) -> None:
    """Make the weights file's header claim `parameters` (init reads headers, never weights)."""
    import struct

    header = json.dumps({"big": {"dtype": "BF16", "shape": [parameters], "data_offsets": [0, 2 * parameters]}}).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(header)) + header)


def test_init_drafts_a_working_decoder_config(task_files, tmp_path):
    small = families.build("llama", tmp_path / "llama")
    out = run_here("init", "--data", str(task_files["train"]), "--validation", str(task_files["validation"]),
                   "--model", str(small), "-o", str(tmp_path / "small.yaml"), "--json")
    assert out.returncode == 0, out.stderr
    facts = json.loads(out.stdout)["model"]
    assert facts["decoder"] and not facts["peft"] and facts["pad_token_id"] == 2
    text = (tmp_path / "small.yaml").read_text()
    assert "pad token: id 2, the tokenizer's EOS token" in text and "# peft: {method: lora" in text
    drafted = yaml.safe_load(text)
    assert drafted["data"]["max_length"] <= 64  # the model's positions, not the tokenizer's 1e30
    trained = run_here("train", "-c", str(tmp_path / "small.yaml"), "--set", f"train.output_dir={tmp_path / 'run'}",
                       "--set", "train.max_steps=2")
    assert trained.returncode == 0, trained.stderr

    import shutil

    big = tmp_path / "big"
    shutil.copytree(small, big)
    _fake_size(big, 1_200_000_000)
    out = run_here("init", "--data", str(task_files["train"]), "--model", str(big), "-o", str(tmp_path / "big.yaml"),
                   "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["model"] == {"parameters": 1_200_000_000, "decoder": True, "pad_token_id": 2,
                                               "peft": True}
    drafted = yaml.safe_load((tmp_path / "big.yaml").read_text())
    assert drafted["model"]["peft"]["method"] == "lora" and drafted["model"]["dtype"] == "bfloat16"
    assert drafted["train"]["gradient_checkpointing"] is True and drafted["train"]["learning_rate"] == 2e-4
    from ftcli import load_config

    assert load_config(tmp_path / "big.yaml").model.peft.target_modules == "auto"


def test_the_tokenizers_padding_side_changes_nothing(task_files, tmp_path):
    """Decoder tokenizers often pad on the left; ftcli's collator pads on the right either way, so
    the same model gives the same results whichever side its tokenizer names."""
    import shutil

    model = families.build("llama", tmp_path / "llama")
    _, path = _config(tmp_path, model, task_files, max_steps=4)
    assert run_here("train", "-c", str(path)).returncode == 0
    left = tmp_path / "left-tokenizer"
    shutil.copytree(model, left)
    settings = json.loads((left / "tokenizer_config.json").read_text())
    (left / "tokenizer_config.json").write_text(json.dumps({**settings, "padding_side": "left"}))
    right_eval = json.loads(run_here("eval", "-c", str(path), "--json").stdout)
    left_eval = run_here("eval", "-c", str(path), "--set", f"model.tokenizer={left}", "--json")
    assert left_eval.returncode == 0, left_eval.stderr
    left_eval = json.loads(left_eval.stdout)
    for k in ("accuracy", "f1", "loss"):
        assert left_eval[k] == right_eval[k]
