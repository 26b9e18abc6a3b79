"""The model from the config (pretrained, with a head sized for the labels, adapters when asked)
and trained model folders (full models, or adapter exports on their base model)."""

from __future__ import annotations

import json
from pathlib import Path

from ftcli.config import ModelConfig
from ftcli.data import locate
from ftcli.errors import FtcliError, first_line
from ftcli.quiet import quiet


def attention_for(model: ModelConfig) -> str | None:
    """`model.attn_implementation`, with `auto` meaning the transformers default (sdpa)."""
    return None if model.attn_implementation == "auto" else model.attn_implementation


def load_model(model: ModelConfig, label_names: list[str], multi_label: bool = False,
               pad_token_id: int | None = None):
    """The pretrained model with a classification head sized for `label_names` ([] = regression);
    `multi_label`: one independent score per label (the config says so, for predict and the Hub).
    `pad_token_id`: the id batches are padded with (the prepared data's), given to the model
    config: decoder heads pool the last token that is not padding. Adapters (`model.peft`) are
    added by the caller (ftcli.adapters.add_adapters), after any change to the plain model."""
    source = locate(model.name_or_path, "model.name_or_path")
    loaded = _from_pretrained(model, source, label_names, multi_label)
    if pad_token_id is not None:
        loaded.config.pad_token_id = pad_token_id
    return loaded


def _from_pretrained(model: ModelConfig, source: str, label_names: list[str], multi_label: bool):
    from transformers import AutoModelForSequenceClassification

    kwargs = {"num_labels": 1, "problem_type": "regression"} if not label_names else {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {n: i for i, n in enumerate(label_names)},
        "problem_type": "multi_label_classification" if multi_label else "single_label_classification",
    }
    import torch

    attention = attention_for(model)
    try:
        with quiet("transformers"):
            return AutoModelForSequenceClassification.from_pretrained(
                source,
                revision=model.revision,
                trust_remote_code=model.trust_remote_code,
                ignore_mismatched_sizes=True,  # a fine-tuned model may carry a head of another size
                # fp32 master weights whatever the checkpoint's dtype: transformers 5 would load a
                # bf16 checkpoint as bf16, and AdamW updates of 5e-5 vanish in bf16's 8-bit mantissa.
                # Mixed precision comes from autocast. A frozen base held in bf16 (adapters) loads as
                # bf16, so no float32 copy ever fills memory; ftcli.adapters widens what trains.
                dtype=torch.bfloat16 if model.dtype == "bfloat16" and model.peft is not None else torch.float32,
                attn_implementation=attention,
                **kwargs,
            )
    except (OSError, ValueError) as exc:
        raise FtcliError(f"model.name_or_path: cannot load a model from {source!r} ({first_line(exc)})") from None


def load_trained(model_dir: str | Path, label_names: list[str] | None = None, pad_token_id: int | None = None,
                 base: ModelConfig | None = None):
    """A model written by `ftcli train` (or any sequence-classification folder), or an adapter
    export (`model.peft.export: adapter`) on its base model, merged. When the data's labels are
    given, they must match the model's; `pad_token_id`: the prepared data's, given to the model
    config. `base`: the config's model, which an adapter export's base must be."""
    from transformers import AutoModelForSequenceClassification

    from ftcli import adapters

    folder = Path(model_dir)
    if not (folder / "config.json").is_file():
        hint = "train first, or pass --model with a trained model folder"
        what = "does not exist" if not folder.exists() else "holds no model (config.json missing)"
        raise FtcliError(f"model folder {str(folder)!r} {what}; {hint}")
    import torch

    if adapters.is_adapter_folder(folder):
        model = _adapter_export(folder, base)
    else:
        try:
            with quiet("transformers"):
                model = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32)
        except (OSError, ValueError, RuntimeError) as exc:
            raise FtcliError(f"model folder {str(folder)!r}: cannot load it ({first_line(exc)})") from None
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id
    if label_names is not None:
        regression = model.config.num_labels == 1 or model.config.problem_type == "regression"
        have = [] if regression else [model.config.id2label[i] for i in range(model.config.num_labels)]
        if have != list(label_names):  # [] is regression: a classifier must not pass as one
            def says(names, verb=""):
                return f"labels{verb} {names}" if names else "a regression target (no labels)"

            raise FtcliError(
                f"model folder {str(folder)!r} predicts {says(have)} but the data's {says(list(label_names), ' are')}; "
                "evaluate it with the config it was trained with"
            )
    return model


def _adapter_export(folder: Path, base: ModelConfig | None):
    """An adapter export merged onto its base model: the one it was trained on, which the
    config's model (when given) must be."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from ftcli import adapters

    trained_on = adapters.adapter_base(folder)
    if base is not None and locate(base.name_or_path, "model.name_or_path") != trained_on:
        raise FtcliError(f"model folder {str(folder)!r} holds adapters for the base model {trained_on!r}, but the "
                         f"config's model.name_or_path is {base.name_or_path!r}; evaluate it with the config it was "
                         "trained with")
    import torch

    try:
        with quiet("transformers"):
            config = AutoConfig.from_pretrained(str(folder))
            model = AutoModelForSequenceClassification.from_pretrained(
                locate(trained_on, f"{folder}/{adapters.ADAPTER_CONFIG}: base_model_name_or_path"),
                config=config, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        raise FtcliError(f"model folder {str(folder)!r}: cannot load its base model {trained_on!r} "
                         f"({first_line(exc)})") from None
    return adapters.attach_saved(model, folder)


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise FtcliError(f"{path}: unreadable ({exc})") from None
