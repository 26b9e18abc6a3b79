"""Faster dropout for CPU training.

On CPU, `torch.nn.functional.dropout` draws one 32-bit uniform float per element from the
(serial) Mersenne Twister to build its mask; in a BERT step at batch 8 that is about a fifth of
the whole step (MiniLM on MRPC: ~26 ms of ~145 ms). Here the mask takes 16 random bits per element
(four per 64-bit draw) and is applied by dropout's own fused kernel: ~3x faster, same distribution up to the
quantization of p to 1/65536 (0.1 -> 0.1000061, and the kept values are scaled by the exact
1/(1 - p_effective), so the expectation is unchanged). The generator is torch's global one, so
seeding and checkpoint/resume stay exact.

`install(model)` swaps the model's `nn.Dropout` modules and routes attention through an eager
implementation that uses the same dropout; `verify(model, batch)` then runs one batch through
both attentions and keeps ftcli's only when the logits agree (a model family whose attention
does more, such as T5's position bias, is declined, never trained under other math). Only for
training on CPU: on GPUs dropout is already cheap (Philox, fused).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

ATTENTION_NAME = "ftcli_eager"


class _MaskedScale(torch.autograd.Function):
    """x * keep * scale, forward and backward, as one fused kernel each (the op behind
    dropout's own backward); the mask is kept as 1 byte per element."""

    @staticmethod
    def forward(ctx, x, keep, scale):
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.ops.aten.native_dropout_backward(x, keep, scale)

    @staticmethod
    def backward(ctx, grad):
        (keep,) = ctx.saved_tensors
        return torch.ops.aten.native_dropout_backward(grad, keep, ctx.scale), None, None


def dropout(x: torch.Tensor, p: float, training: bool = True) -> torch.Tensor:
    if not training or p <= 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    threshold = round(p * 65536)  # drop when the 16-bit draw is below it
    n = x.numel()
    bits = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(2**63), 2**63 - 1)
    keep = bits.view(torch.int16)[:n].view(x.shape) >= threshold - 32768
    scale = 65536 / (65536 - threshold)  # 1 / (1 - p_effective): unbiased
    return _MaskedScale.apply(x, keep, scale)


class FastDropout(nn.Dropout):
    """`nn.Dropout` with the faster mask; keeps `.p` (models read it, e.g. for attention)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dropout(x, self.p, self.training)


def eager_attention(module, query, key, value, attention_mask, scaling=None, dropout_p=0.0, **kwargs):
    """transformers' eager attention (BERT's `eager_attention_forward`, with grouped key/value
    heads repeated as Llama's does, and Gemma 2's soft-capping) with the faster dropout. Sliding
    windows arrive in `attention_mask`. What it does not implement (T5's position bias, attention
    sinks, ...) shows in `verify`, which then declines it."""
    dropout_p = kwargs.pop("dropout", dropout_p)
    if kwargs.get("s_aux") is not None:  # attention sinks (gpt-oss): not implemented, so `verify` declines
        raise NotImplementedError("attention sinks")
    if key.shape[1] != query.shape[1]:  # grouped-query attention: each key/value head serves a group
        group = query.shape[1] // key.shape[1]
        key, value = key.repeat_interleave(group, dim=1), value.repeat_interleave(group, dim=1)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    weights = torch.matmul(query * scaling, key.transpose(2, 3))  # scale the smaller tensor
    if (softcap := kwargs.get("softcap")) is not None:  # Gemma 2's soft-capping of the scores
        weights = torch.tanh(weights / softcap) * softcap
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = nn.functional.softmax(weights, dim=-1)
    weights = dropout(weights, dropout_p, module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


def swap_dropout(model: nn.Module) -> int:
    """Use the faster dropout for every `nn.Dropout` in `model` (also adapters' dropouts);
    returns how many modules it swapped."""
    swapped = 0
    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if type(child) is nn.Dropout:
                replacement = FastDropout(child.p, inplace=False)
                replacement.train(child.training)
                setattr(module, name, replacement)
                swapped += 1
    return swapped


def install(model: nn.Module) -> int:
    """Use the faster dropout everywhere in `model`; returns how many dropout modules it swapped.
    Attention is rerouted only for models that use transformers' attention interface."""
    swapped = swap_dropout(model)
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, eager_mask
    except ImportError:
        return swapped  # older transformers: hidden dropouts only
    default = getattr(model.config, "_attn_implementation", None)
    # Registered under ftcli's own name: transformers' registries are process-wide, and adding a
    # name changes nothing for models that do not ask for it.
    AttentionInterface.register(ATTENTION_NAME, eager_attention)
    # A custom attention also needs its mask builder registered, or it receives no padding mask
    # at all (and would attend to padding): the eager one, an additive float mask.
    AttentionMaskInterface.register(ATTENTION_NAME, eager_mask)
    from ftcli.quiet import quiet

    try:
        with quiet("transformers"):  # transformers 4.x logs its refusal; ftcli falls back quietly
            model.set_attn_implementation(ATTENTION_NAME)
    except (AttributeError, ValueError):
        return swapped  # a model without the attention interface: hidden dropouts only
    if getattr(model.config, "_attn_implementation", None) != ATTENTION_NAME:
        return swapped  # refused without raising (transformers 4.56)
    model._ftcli_default_attention = default  # only now: standard_attention() swaps back to it
    return swapped


def verify(model: nn.Module, sample: dict[str, torch.Tensor]) -> str | None:
    """Prove on one batch that ftcli's attention gives the model's own logits (eval mode: no
    dropout, no random numbers drawn). None when they agree (or attention was not rerouted);
    otherwise the reason, and the model's own attention is put back for the whole run."""
    default = getattr(model, "_ftcli_default_attention", None)
    if default is None:
        return None
    was_training, problem = model.training, None
    model.eval()
    try:
        with torch.no_grad():
            try:
                fast = model(**sample).logits.float()
            except Exception as exc:  # noqa: BLE001 - any failure means: not for this model
                detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
                problem = f"it fails on this model ({detail})"
            else:
                model.set_attn_implementation(default)
                own = model(**sample).logits.float()
                model.set_attn_implementation(ATTENTION_NAME)
                if not torch.allclose(fast, own, rtol=1e-4, atol=1e-5):
                    problem = (f"its logits differ from the model's own {default} attention by up to "
                               f"{float((fast - own).abs().max()):.2g}")
    finally:
        model.train(was_training)
    if problem is not None:
        model.set_attn_implementation(default)
        del model._ftcli_default_attention
    return problem


@contextlib.contextmanager
def standard_attention(model: nn.Module):
    """Evaluate with the attention the exported model will be loaded with: in bf16 the eager and
    sdpa kernels round differently, and evaluation during training must give exactly the numbers
    `ftcli eval` gives on the saved model."""
    default = getattr(model, "_ftcli_default_attention", None)
    if default is None:
        yield
        return
    model.set_attn_implementation(default)
    try:
        yield
    finally:
        model.set_attn_implementation(ATTENTION_NAME)
