"""LoRA through peft on a tiny Llama without a pad token: only the adapters and the head move,
the exports (merged by default, or the adapter) give the logits the adapter model gave, resume
after kill -9 is bit-identical, 2 processes train like 1, gradient checkpointing and a bf16 base
work, and bad requests get one line."""

from __future__ import annotations

import json
import signal
import sys

import pytest
import yaml

import families
from conftest import accelerate_launch, config_dict, make_rows, run_cli, run_here, write_jsonl

pytestmark = pytest.mark.slow

PEFT = {"r": 4, "alpha": 8, "dropout": 0.05}


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return families.build("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def llama_no_dropout(tmp_path_factory):
    return families.build("llama", tmp_path_factory.mktemp("llama-no-dropout"), dropout=0.0)


def lora_config(tmp_path, model, files, name="config.yaml", peft=None, model_extra=None, **train):
    cfg = config_dict(model, files, tmp_path, **{"epochs": 3, "learning_rate": 5e-3, **train})
    cfg["model"]["peft"] = {**PEFT, **(peft or {})}
    cfg["model"].update(model_extra or {})
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def train_losses(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r["loss"] for r in map(json.loads, lines) if r["type"] == "train"]


def _canonical(key: str) -> str:
    """A PeftModel checkpoint key as the base model's file names it."""
    key = key.removeprefix("base_model.model.").removeprefix("model.")
    return key.replace(".base_layer.", ".")


def test_only_adapters_and_head_train_and_the_adapter_export_reloads(llama, task_files, tmp_path):
    import torch
    from safetensors.torch import load_file

    path = lora_config(tmp_path, llama, task_files, peft={"export": "adapter"}, log_every=2)
    trained = run_here("train", "-c", str(path), "--json")
    assert trained.returncode == 0, trained.stderr
    result = json.loads(trained.stdout)
    assert "trainable (" in trained.stderr and "lora r 4, alpha 8" in trained.stderr
    losses = train_losses(tmp_path / "run")
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # the loss goes down

    # The base weights are bit-identical after training; the adapters and the head moved.
    base = load_file(llama / "model.safetensors")
    ckpt = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))[-1]
    state = load_file(ckpt / "model.safetensors")
    frozen = {_canonical(k): v for k, v in state.items()
              if "lora_" not in k and "modules_to_save" not in k and "original_module" not in k}
    assert set(base) <= set(frozen)
    assert [k for k in base if not torch.equal(base[k], frozen[k])] == []
    lora_b = [v for k, v in state.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # initialized at zero, then trained
    head_new = state["base_model.model.score.modules_to_save.default.weight"]
    head_init = state["base_model.model.score.original_module.weight"]
    assert not torch.equal(head_new, head_init)

    # The adapter export: adapters and head only, and eval/predict take it.
    folder = tmp_path / "run" / "model"
    assert (folder / "adapter_config.json").is_file() and not (folder / "model.safetensors").exists()
    assert any("score" in k for k in load_file(folder / "adapter_model.safetensors"))
    ev = run_here("eval", "-c", str(path), "--json")
    assert ev.returncode == 0, ev.stderr
    ev = json.loads(ev.stdout)
    for k in ("accuracy", "f1"):
        assert ev[k] == result["eval"][k]
    assert ev["loss"] == pytest.approx(result["eval"]["loss"], rel=1e-5)
    pred = run_here("predict", "-c", str(path), "--input", str(task_files["test"]), "--output",
                    str(tmp_path / "p.jsonl"))
    assert pred.returncode == 0, pred.stderr
    assert len((tmp_path / "p.jsonl").read_text().splitlines()) == 7

    # The merged model's logits are the adapter model's.
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from ftcli.modeling import load_trained

    batch = {"input_ids": torch.tensor([[1, 5, 9, 13, 2, 2], [1, 7, 8, 20, 21, 30]]),
             "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])}
    plain = AutoModelForSequenceClassification.from_pretrained(llama, config=AutoConfig.from_pretrained(folder))
    adapter_model = PeftModel.from_pretrained(plain, folder).eval()
    merged = load_trained(folder).eval()
    with torch.no_grad():
        want = adapter_model(**batch).logits
        got = merged(**batch).logits
    assert torch.allclose(want, got, atol=1e-5)
    assert not any("lora" in name for name, _ in merged.named_modules())


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_merged_export_is_a_plain_model_with_the_adapter_models_results(llama, task_files, tmp_path, method):
    path = lora_config(tmp_path, llama, task_files, epochs=1, peft={"method": method})
    trained = run_here("train", "-c", str(path), "--json")
    assert trained.returncode == 0, trained.stderr
    result = json.loads(trained.stdout)
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification

    folder = tmp_path / "run" / "model"
    assert not (folder / "adapter_config.json").exists()
    assert not [k for k in load_file(folder / "model.safetensors") if "lora" in k or "modules_to_save" in k]
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    assert type(model).__name__ == "LlamaForSequenceClassification" and model.config.pad_token_id == 2
    ev = json.loads(run_here("eval", "-c", str(path), "--json").stdout)
    for k in ("accuracy", "f1"):  # train evaluated the unmerged adapter model
        assert ev[k] == result["eval"][k]
    assert ev["loss"] == pytest.approx(result["eval"]["loss"], rel=1e-5)


def test_gradient_checkpointing_changes_no_loss(llama, task_files, tmp_path):
    """Recomputed activations replay dropout's masks: per-step losses equal the plain run's."""
    plain = lora_config(tmp_path, llama, task_files, "plain.yaml", epochs=1, log_every=1,
                        output_dir=str(tmp_path / "plain"))
    ckpt = lora_config(tmp_path, llama, task_files, "ckpt.yaml", epochs=1, log_every=1, gradient_checkpointing=True,
                       output_dir=str(tmp_path / "ckpt"))
    full = lora_config(tmp_path, llama, task_files, "full.yaml", epochs=1, log_every=1, gradient_checkpointing=True,
                       output_dir=str(tmp_path / "full"))
    cfg = yaml.safe_load(full.read_text())
    del cfg["model"]["peft"]
    full.write_text(yaml.safe_dump(cfg))
    full_plain = tmp_path / "full_plain.yaml"
    cfg["train"].update(gradient_checkpointing=False, output_dir=str(tmp_path / "full_plain"))
    full_plain.write_text(yaml.safe_dump(cfg))
    for p in (plain, ckpt, full, full_plain):
        out = run_here("train", "-c", str(p))
        assert out.returncode == 0, out.stderr
    assert train_losses(tmp_path / "ckpt") == pytest.approx(train_losses(tmp_path / "plain"), abs=1e-6)
    assert train_losses(tmp_path / "full") == pytest.approx(train_losses(tmp_path / "full_plain"), abs=1e-6)


def test_bf16_base_keeps_trained_weights_in_fp32(llama, task_files, tmp_path):
    """The frozen linear and embedding weights are held in bf16 and widened for each product:
    the logits are the fp32 model's with bf16-rounded weights; gradients reach the adapters."""
    import torch
    from torch import nn

    from ftcli import load_config
    from ftcli.adapters import add_adapters
    from ftcli.modeling import load_model

    path = lora_config(tmp_path, llama, task_files, epochs=1, model_extra={"dtype": "bfloat16"})
    cfg = load_config(path)
    assert cfg.train.mixed_precision == "no"  # storage, not arithmetic: the products stay float32
    torch.manual_seed(0)
    model = add_adapters(load_model(cfg.model, ["no", "yes"], pad_token_id=2), cfg.model, str(llama))
    for module in model.modules():
        for p in module.parameters(recurse=False):
            frozen_matrix = not p.requires_grad and isinstance(module, (nn.Linear, nn.Embedding)) and p.dim() == 2
            assert p.dtype == (torch.bfloat16 if frozen_matrix else torch.float32), module
    assert any(p.dtype == torch.bfloat16 for p in model.parameters())
    torch.manual_seed(0)
    reference = add_adapters(load_model(cfg.model.model_copy(update={"dtype": "float32"}), ["no", "yes"],
                                        pad_token_id=2), cfg.model.model_copy(update={"dtype": "float32"}), str(llama))
    trained = {n: p for n, p in model.named_parameters() if p.requires_grad}
    for name, p in reference.named_parameters():  # the same weights, rounded as the bf16 base holds them
        if not p.requires_grad and p.dim() == 2:
            p.data = p.data.to(torch.bfloat16).float()
        elif name in trained:  # the new head was drawn in bf16
            p.data = trained[name].data.clone()
    batch = {"input_ids": torch.tensor([[1, 5, 9, 13, 2, 2]]), "attention_mask": torch.tensor([[1, 1, 1, 1, 0, 0]]),
             "labels": torch.tensor([1])}
    model.train(False), reference.train(False)
    out, want = model(**batch), reference(**batch)
    assert torch.allclose(out.logits, want.logits, atol=1e-5)
    out.loss.backward()
    want.loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    ref_grads = {n: p.grad for n, p in reference.named_parameters() if p.requires_grad}
    assert grads.keys() == ref_grads.keys() and all(g is not None for g in grads.values())
    assert all(torch.allclose(grads[n], ref_grads[n], atol=1e-6) for n in grads)

    trained = run_here("train", "-c", str(path), "--json")
    assert trained.returncode == 0, trained.stderr
    assert "base in bfloat16" in trained.stderr
    from safetensors.torch import load_file

    exported = load_file(tmp_path / "run" / "model" / "model.safetensors")
    assert {v.dtype for v in exported.values()} == {torch.float32}  # merged in fp32
    result = json.loads(trained.stdout)
    ev = json.loads(run_here("eval", "-c", str(path), "--json").stdout)
    assert ev["accuracy"] == result["eval"]["accuracy"]


def test_kill_and_resume_with_adapters_is_bit_identical(llama, task_files, tmp_path):
    ckpt = ["--set", "train.checkpoint_every=5", "--set", "train.log_every=1"]
    path = lora_config(tmp_path, llama, task_files, peft={"export": "adapter"}, epochs=2)
    ref = run_here("train", "-c", str(path), *ckpt, "--set", f"train.output_dir={tmp_path / 'ref'}")
    assert ref.returncode == 0, ref.stderr
    out = ["--set", f"train.output_dir={tmp_path / 'run'}"]
    killed = run_cli("train", "-c", str(path), *ckpt, *out, env={"FTCLI_FAULT": "step:13"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    resumed = run_here("train", "-c", str(path), *ckpt, *out, "--resume", "auto", "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert "step-0000010" in json.loads(resumed.stdout)["resumed_from"]
    a = (tmp_path / "ref" / "model" / "adapter_model.safetensors").read_bytes()
    b = (tmp_path / "run" / "model" / "adapter_model.safetensors").read_bytes()
    assert a == b
    assert train_losses(tmp_path / "run") == train_losses(tmp_path / "ref")


@pytest.mark.multiprocess
def test_two_processes_of_4_train_adapters_like_one_of_8(llama_no_dropout, tmp_path):
    from safetensors.torch import load_file

    files = {"train": write_jsonl(tmp_path / "train.jsonl", make_rows(100, seed=4)),
             "validation": write_jsonl(tmp_path / "val.jsonl", make_rows(12, seed=5))}
    one = lora_config(tmp_path, llama_no_dropout, files, "one.yaml", peft={"dropout": 0.0, "export": "adapter"},
                      epochs=2, log_every=1, output_dir=str(tmp_path / "one"))
    two = lora_config(tmp_path, llama_no_dropout, files, "two.yaml", peft={"dropout": 0.0, "export": "adapter"},
                      epochs=2, log_every=1, batch_size=4, output_dir=str(tmp_path / "two"))
    assert run_here("train", "-c", str(one)).returncode == 0
    launched = accelerate_launch("train", "-c", str(two), "--json")
    assert launched.returncode == 0, launched.stderr[-3000:]
    assert json.loads(launched.stdout)["processes"] == 2
    assert train_losses(tmp_path / "two") == pytest.approx(train_losses(tmp_path / "one"), abs=1e-5)
    w1 = load_file(tmp_path / "one" / "model" / "adapter_model.safetensors")
    w2 = load_file(tmp_path / "two" / "model" / "adapter_model.safetensors")
    assert w1.keys() == w2.keys()
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-5


@pytest.mark.parametrize("peft, expect", [
    ({"target_modules": ["nope_proj"]}, "model.peft.target_modules: 'nope_proj' matches no module"),
    ({"target_modules": ["score"]}, "model.peft.target_modules: 'score' is part of the classification head"),
])
def test_bad_target_modules_get_one_line(llama, task_files, tmp_path, peft, expect):
    out = run_here("train", "-c", str(lora_config(tmp_path, llama, task_files, peft=peft)))
    assert out.returncode == 2
    lines = [x for x in out.stderr.splitlines() if x.startswith("error:")]
    assert len(lines) == 1 and expect in lines[0], out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()


def test_peft_missing_gets_one_line(llama, task_files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft now raises ImportError
    path = lora_config(tmp_path, llama, task_files)
    for command in ("train", "validate"):
        out = run_here(command, "-c", str(path))
        assert out.returncode == 2, out.stderr
        assert "model.peft: adapters need the peft package" in out.stderr and "pip install peft" in out.stderr
    assert not (tmp_path / "run").exists()


def test_adapter_export_with_another_base_model_is_refused(llama, task_files, tmp_path):
    path = lora_config(tmp_path, llama, task_files, peft={"export": "adapter"}, max_steps=2)
    assert run_here("train", "-c", str(path)).returncode == 0
    other = families.build("llama", tmp_path / "other-llama")
    for command in (["eval"], ["predict", "--input", str(task_files["test"]), "--output", str(tmp_path / "p.jsonl")]):
        out = run_here(*command, "-c", str(path), "--set", f"model.name_or_path={other}")
        assert out.returncode == 2, out.stderr
        assert "holds adapters for the base model" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "p.jsonl").exists()
