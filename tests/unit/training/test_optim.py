"""Gradient clipping folded into fused AdamW (`grad_scale`) against the plain path: unfused AdamW
after `torch.nn.utils.clip_grad_norm_`. The fold relies on a private hook of torch's fused kernel;
if torch stopped reading it, clipping would silently stop, and these tests would fail."""

from __future__ import annotations


import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

from ftcli.training import optim

STEPS, LR, MAX_NORM = 60, 1e-3, 0.05


def _config(tied: bool) -> BertConfig:
    return BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, hidden_dropout_prob=0.0,
                      attention_probs_dropout_prob=0.0, tie_word_embeddings=tied, num_labels=2)


def _model(tied: bool):
    torch.manual_seed(0)
    return (BertForMaskedLM if tied else BertForSequenceClassification)(_config(tied))


def _batches(tied: bool):
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        ids = torch.randint(5, 60, (8, 12), generator=g)  # touches rows 5..59 of 120: a sparse gradient
        labels = ids.clone() if tied else torch.randint(0, 2, (8,), generator=g)
        yield ids, labels


def _train(tied: bool, mode: str) -> dict[str, torch.Tensor]:
    """mode: `folded` (ftcli's path), `plain` (clip_grad_norm_ + unfused AdamW), `unclipped`."""
    model = _model(tied).train()
    fused = mode == "folded"
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0, fused=fused, foreach=False if not fused else None)
    norms = []
    for ids, labels in _batches(tied):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        norms.append(float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))))
        if mode == "folded":
            embedding = optim.sparse_grad_embedding(model, processes=1)
            assert (embedding is None) == tied  # the row-sparse norm is used exactly when it is exact
            optim.fold_clipping(model, opt, MAX_NORM, embedding=embedding, input_ids=ids)
        elif mode == "plain":
            torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)
        opt.step()
        optim.release_grad_scale(opt)
        opt.zero_grad(set_to_none=True)
    assert min(norms) > MAX_NORM  # clipping was active on every step
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _max_diff(a, b) -> float:
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("tied", [False, True], ids=["untied-sparse-norm", "tied-embeddings"])
def test_folded_clipping_equals_clip_grad_norm(tied):
    folded, plain, unclipped = (_train(tied, m) for m in ("folded", "plain", "unclipped"))
    assert _max_diff(folded, plain) < 1e-5  # float rounding of two kernels: ~5e-7 measured
    assert _max_diff(plain, unclipped) > 1e-3  # clipping matters here, so the first check can fail


def test_fold_is_refused_where_torch_would_ignore_it():
    model = _model(False)
    plain = torch.optim.AdamW(model.parameters(), foreach=False)
    assert optim.clipping_mode(plain, distributed="NO", has_scaler=False) == (
        "separate", "the optimizer is not torch's fused AdamW")
    fused = torch.optim.AdamW(model.parameters(), fused=True)
    assert optim.clipping_mode(fused, distributed="NO", has_scaler=False) == ("folded", None)
    assert optim.clipping_mode(fused, distributed="FSDP", has_scaler=False)[0] == "separate"
    assert optim.clipping_mode(fused, distributed="NO", has_scaler=True)[0] == "separate"
