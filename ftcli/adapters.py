"""LoRA adapters through `peft`: which modules get them, which form the head, and the exports.

The classification head is whatever the model holds beside its backbone (`base_model_prefix`):
`classifier` in BERT, `pre_classifier` + `classifier` in DistilBERT, `score` in decoders,
`classification_head` in T5, `pooler` + `classifier` in DeBERTa. It is new (randomly initialized)
in a fine-tuning run, so it is trained in full (peft's `modules_to_save`) and saved with the
adapters; a name list per family would miss the next family.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ftcli.errors import FtcliError, first_line

if TYPE_CHECKING:  # pragma: no cover
    from torch import nn

    from ftcli.config import ModelConfig, PeftConfig

ADAPTER_CONFIG = "adapter_config.json"


def require_peft() -> None:
    """The one-line error for a `peft:` section without the package."""
    try:
        import peft  # noqa: F401
    except ImportError:
        raise FtcliError("model.peft: adapters need the peft package, which is not installed; "
                         "pip install peft (or pip install 'ftcli[peft]'), or remove the peft: section") from None


def backbone_name(model: nn.Module) -> str:
    prefix = getattr(model, "base_model_prefix", "")
    if not prefix or not hasattr(model, prefix):
        raise FtcliError(f"model.peft: cannot tell the backbone of {type(model).__name__} from its head "
                         "(no base_model_prefix); train it without peft")
    return prefix


def head_modules(model: nn.Module) -> list[str]:
    """The modules beside the backbone that hold weights: the classification head."""
    backbone = backbone_name(model)
    return [name for name, child in model.named_children()
            if name != backbone and any(True for _ in child.parameters())]


def _projection_types() -> tuple[type, ...]:
    from torch import nn
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

    return nn.Linear, Conv1D


def auto_targets(model: nn.Module) -> str:
    """Every linear projection inside the backbone (attention and MLP), as the regular expression
    peft matches against module paths: the head is never among them."""
    backbone = backbone_name(model)
    names = sorted({name.rsplit(".", 1)[-1] for name, module in getattr(model, backbone).named_modules()
                    if isinstance(module, _projection_types())})
    if not names:
        raise FtcliError(f"model.peft.target_modules: auto found no linear layers in {type(model).__name__}; "
                         "name the modules to adapt")
    return rf"{re.escape(backbone)}\..*\.({'|'.join(map(re.escape, names))})"


def check_targets(model: nn.Module, targets: list[str]) -> None:
    """Each name must match a module of the backbone (peft's rule: the dotted path is the name or
    ends with `.name`); a name of the head is refused, since the head is trained in full."""
    heads = head_modules(model)
    paths = [name for name, _ in model.named_modules() if name]
    projections = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                          if isinstance(m, _projection_types()) and name.split(".")[0] not in heads})
    for target in targets:
        hits = [p for p in paths if p == target or p.endswith("." + target)]
        if not hits:
            raise FtcliError(f"model.peft.target_modules: {target!r} matches no module of this "
                             f"{type(model).__name__}; its linear layers are named {', '.join(projections[:12])}, "
                             "or use auto")
        if all(p.split(".")[0] in heads for p in hits):
            raise FtcliError(f"model.peft.target_modules: {target!r} is part of the classification head "
                             f"({', '.join(heads)}), which is trained in full anyway; remove it")


def add_adapters(model: nn.Module, cfg: ModelConfig, source: str) -> nn.Module:
    """`model` wrapped by peft as `cfg.peft` says, the base frozen (in `cfg.dtype`), the adapters
    and the head trainable in float32. `source`: the base model's location, recorded in the
    adapter's config (and checked when an adapter export is loaded)."""
    require_peft()
    from peft import LoraConfig, TaskType, get_peft_model

    p = cfg.peft
    if p.target_modules != "auto":
        check_targets(model, p.target_modules)
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=p.r, lora_alpha=p.alpha, lora_dropout=p.dropout, use_dora=p.method == "dora",
        target_modules=auto_targets(model) if p.target_modules == "auto" else list(p.target_modules),
        modules_to_save=head_modules(model), base_model_name_or_path=source,
    )
    from ftcli.quiet import quiet

    try:
        with quiet("transformers", "warnings"):  # peft's calls of APIs transformers marks deprecated
            wrapped = get_peft_model(model, config)
    except (ValueError, TypeError) as exc:
        raise FtcliError(f"model.peft: peft cannot add {p.method} adapters to this model ({first_line(exc)})") from None
    if cfg.dtype == "bfloat16":
        hold_in_bf16(wrapped)
    return wrapped


@functools.cache
def _bf16_weight_product():
    """The autograd function behind `hold_in_bf16` (built on first use: torch loads lazily)."""
    import torch

    class Bf16WeightProduct(torch.autograd.Function):
        """`x @ W + b` for a frozen bf16 `W` (Linear's `weight.t()`, GPT-2 Conv1D's `weight`),
        widened to the input's dtype for the product only. The backward pass keeps the bf16
        weight: no float32 copy per layer waits for it."""

        @staticmethod
        def forward(ctx, x, weight, bias, transposed):
            ctx.save_for_backward(weight)
            ctx.transposed = transposed
            w = weight.to(x.dtype)
            out = x @ (w.t() if transposed else w)
            return out + bias.to(out.dtype) if bias is not None else out

        @staticmethod
        def backward(ctx, grad):
            (weight,) = ctx.saved_tensors
            w = weight.to(grad.dtype)
            return grad @ (w if ctx.transposed else w.t()), None, None, None

    return Bf16WeightProduct


def hold_in_bf16(model: nn.Module) -> None:
    """Hold the frozen weights of linear layers and embeddings in bf16 (half the memory) and
    compute with them widened to the activations' dtype: float32, or bf16 under bf16 autocast.
    On CPUs without native bf16 a bf16 matmul measured 5x slower than a float32 one, while
    widening a weight costs about nothing; so bf16 storage does not mean bf16 arithmetic. Norms
    and every trained parameter stay float32. Under bf16 autocast the product itself runs in
    bf16 (autocast casts inside the function's forward)."""
    import types

    import torch
    from torch import nn

    (_, conv1d) = _projection_types()
    held = set()
    for module in model.modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or weight.requires_grad:
            continue
        held.add(id(weight))
        if isinstance(module, (nn.Linear, conv1d)):
            weight.data = weight.data.to(torch.bfloat16)  # Linear holds (out, in), Conv1D (in, out)

            def forward(self, x, _transposed=not isinstance(module, conv1d)):
                return _bf16_weight_product().apply(x, self.weight, self.bias, _transposed)

            module.forward = types.MethodType(forward, module)
        elif isinstance(module, nn.Embedding):
            weight.data = weight.data.to(torch.bfloat16)

            def embed(self, ids, _forward=module.forward):
                return _forward(ids).float()  # activations stay float32

            module.forward = types.MethodType(embed, module)
        else:
            held.discard(id(weight))
    for param in model.parameters():  # loaded as bf16 (ftcli.modeling): the rest is widened again
        if id(param) not in held and param.dtype != torch.float32:
            param.data = param.data.float()


def parameter_counts(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters; the head's frozen original under peft is not counted twice."""
    if hasattr(model, "get_nb_trainable_parameters"):
        return model.get_nb_trainable_parameters()
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def is_adapter_folder(folder: Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def adapter_base(folder: Path) -> str:
    """Where the base model of an adapter export was loaded from."""
    import json

    try:
        return str(json.loads((Path(folder) / ADAPTER_CONFIG).read_text())["base_model_name_or_path"])
    except (OSError, ValueError, KeyError) as exc:
        raise FtcliError(f"model folder {str(folder)!r}: unreadable {ADAPTER_CONFIG} ({first_line(exc)})") from None


def attach_saved(base: nn.Module, folder: Path) -> nn.Module:
    """The adapters and head saved in `folder`, on `base`, merged: a plain model for evaluation."""
    require_peft()
    from peft import PeftModel

    from ftcli.quiet import quiet

    try:
        with quiet("transformers", "warnings"):
            model = PeftModel.from_pretrained(base, str(folder), is_trainable=False)
    except (ValueError, RuntimeError, OSError, KeyError) as exc:
        raise FtcliError(f"model folder {str(folder)!r}: its adapters do not fit the base model "
                         f"({first_line(exc)}); evaluate it with the config it was trained with") from None
    return merged(model)


def merged(model: nn.Module) -> nn.Module:
    """The plain model with the adapters folded into its weights, in float32 (a bf16 base is
    widened first, so the small updates are not rounded away). Changes `model` in place."""
    import torch

    for param in model.parameters():
        if param.dtype != torch.float32:
            param.data = param.data.float()
    return model.merge_and_unload()


def save_adapter(model: nn.Module, folder: Path) -> None:
    """The adapters and the head (`adapter_model.safetensors`), and the classifier's config
    (labels, pad id), which loading needs besides the base model."""
    model.save_pretrained(str(folder))
    model.get_base_model().config.save_pretrained(str(folder))
