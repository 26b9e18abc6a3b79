"""The optimizer, and gradient clipping folded into it.

Clipping by norm normally costs a full read-modify-write pass over every gradient. With torch's
fused AdamW the clip coefficient can instead be handed to the kernel as its `grad_scale` (the
hook AMP uses: the kernel divides each gradient by it as it reads it), which saves that pass
(~4 ms of a ~130 ms MiniLM step on CPU). The hook is private to torch; tests/unit/training/test_optim.py
checks that folded clipping still equals `clip_grad_norm_` + AdamW, so a torch that ignored it
would fail there rather than silently train unclipped.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ftcli.config import TrainConfig

# Where gradients are whole on each process when the optimizer runs: one device, or DDP after
# its all-reduce. FSDP/DeepSpeed shard them and XLA has its own optimizer step: Accelerate clips.
_WHOLE_GRADIENTS = ("NO", "MULTI_CPU", "MULTI_GPU")


def make_optimizer(model, train: TrainConfig, device_type: str):
    """AdamW; no weight decay on biases and norm weights (1-d tensors). The fused kernel where
    torch has one (CUDA, and CPU since torch 2.4): one kernel over all parameters instead of a
    loop of small ones, which matters at batch 8 where the update of the word embedding is a
    large share of each step. Returns (optimizer, why the fused kernel is not used or None)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": train.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    kwargs = dict(lr=train.learning_rate, betas=(train.adam_beta1, train.adam_beta2), eps=train.adam_epsilon)
    if not train.fused_optimizer:
        return torch.optim.AdamW(groups, **kwargs), "train.fused_optimizer is off"
    if device_type not in ("cuda", "cpu"):
        return torch.optim.AdamW(groups, **kwargs), f"torch has no fused AdamW for {device_type}"
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs), None
    except (RuntimeError, TypeError) as exc:
        return torch.optim.AdamW(groups, **kwargs), f"fused AdamW is unavailable here ({exc})"


def _inner(optimizer):
    return getattr(optimizer, "optimizer", optimizer)  # Accelerate wraps it


def clipping_mode(optimizer, distributed: str, has_scaler: bool) -> tuple[str, str | None]:
    """`folded` (into fused AdamW's grad_scale) or `separate` (Accelerate's clip_grad_norm_), and
    why not folded."""
    import torch

    inner = _inner(optimizer)
    if not (isinstance(inner, torch.optim.AdamW) and inner.defaults.get("fused")):
        return "separate", "the optimizer is not torch's fused AdamW"
    if str(getattr(distributed, "value", distributed)) not in _WHOLE_GRADIENTS:
        return "separate", f"gradients are sharded or stepped by {distributed}"
    if has_scaler:
        return "separate", "fp16's gradient scaler owns grad_scale"
    return "folded", None


def sparse_grad_embedding(model, processes: int):
    """The word-embedding weight when its gradient is nonzero only on the rows of the batch's
    input ids: one process (DDP would add other processes' rows) and not tied to an output layer
    (whose gradient is dense). None otherwise."""
    if processes != 1:
        return None
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if embeddings is None or (output is not None and getattr(output, "weight", None) is embeddings.weight):
        return None
    return embeddings.weight if embeddings.weight.requires_grad else None  # frozen under adapters: no gradient


def fold_clipping(model, optimizer, max_norm: float, *, embedding=None, input_ids=None) -> torch.Tensor:
    """Hand fused AdamW the clip coefficient as its grad_scale; returns the total gradient norm.

    With `embedding` (see sparse_grad_embedding) and the step's `input_ids`, that weight's norm is
    taken over the rows the ids touched: every other row is exactly zero, and reading all
    30k x 384 of them cost ~4 ms a step. Call release_grad_scale after optimizer.step()."""
    import torch

    grads = [p.grad for p in model.parameters() if p.grad is not None and p is not embedding]
    norms = list(torch._foreach_norm(grads))
    if embedding is not None and embedding.grad is not None:
        rows = torch.unique(input_ids)
        norms.append(torch.linalg.vector_norm(embedding.grad.index_select(0, rows)))
    total = torch.linalg.vector_norm(torch.stack(norms))
    inner = _inner(optimizer)
    inner.grad_scale = torch.clamp((total + 1e-6) / max_norm, min=1.0)  # 1 / clip coefficient
    inner.found_inf = torch.zeros((), device=total.device)
    return total


def release_grad_scale(optimizer) -> None:
    """Undo fold_clipping after the step, so the next step starts unscaled."""
    inner = _inner(optimizer)
    if getattr(inner, "grad_scale", None) is not None:
        inner.grad_scale = inner.found_inf = None
