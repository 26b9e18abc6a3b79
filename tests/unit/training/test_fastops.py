"""The faster CPU dropout: same distribution, exact gradients, padding still masked."""

from __future__ import annotations

import pytest
import torch

from ftcli.training import fastops


def test_dropout_keeps_the_right_fraction_unbiased_and_seeded():
    x = torch.ones(400_000)
    torch.manual_seed(0)
    y = fastops.dropout(x, 0.1)
    kept = (y != 0).float().mean().item()
    assert kept == pytest.approx(0.9, abs=0.003)
    assert y.mean().item() == pytest.approx(1.0, abs=0.004)  # scaled by 1 / (1 - p): unbiased
    torch.manual_seed(0)
    assert torch.equal(fastops.dropout(x, 0.1), y)  # the global generator: seeding (and resume) is exact
    assert fastops.dropout(x, 0.1, training=False) is x and torch.equal(fastops.dropout(x, 1.0), torch.zeros_like(x))


def test_gradient_flows_through_kept_elements_only():
    x = torch.randn(64, 32, requires_grad=True)
    y = fastops.dropout(x, 0.3)
    y.sum().backward()
    keep = y.detach() != 0
    assert torch.allclose(x.grad[keep], torch.full_like(x.grad[keep], y.detach()[keep][0] / x.detach()[keep][0]))
    assert (x.grad[~keep] == 0).all()


def test_installed_model_gives_the_same_outputs_with_padding(tiny_classifier):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_classifier)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_classifier).eval()
    batch = tok(["good cat", "bad dog runs on the big red road today"], ["tree", "house"], padding=True,
                return_tensors="pt")
    reference = model(**batch).logits
    swapped = fastops.install(model)
    assert swapped >= 5 and all(type(m).__name__ != "Dropout" for m in model.modules())
    # Padding must stay masked: a custom attention without its mask builder would attend to it.
    assert torch.allclose(model(**batch).logits, reference, atol=1e-6)
    model.train()
    torch.manual_seed(3)
    a = model(**batch).logits
    torch.manual_seed(3)
    assert torch.equal(model(**batch).logits, a) and not torch.allclose(a, reference)


def _classifier(folder):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(folder).eval()


def _logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def test_standard_attention_is_the_exported_models_attention(tiny_classifier):
    """Evaluation during training runs the attention the saved model is loaded with (sdpa), then
    training goes back to ftcli's eager attention with the fast dropout."""
    model, reference = _classifier(tiny_classifier), _classifier(tiny_classifier)
    default = model.config._attn_implementation
    fastops.install(model)
    if model.config._attn_implementation != fastops.ATTENTION_NAME:
        # transformers 4.56 (the floor, scripts/test_min_versions.sh) refuses custom attention
        # names: ftcli then keeps sdpa, which the next test covers.
        pytest.skip("this transformers does not accept a custom attention implementation")
    ids = torch.tensor([[2, 7, 9, 11, 3, 0, 0], [2, 8, 3, 12, 13, 14, 3]])
    mask = (ids != 0).long()
    with fastops.standard_attention(model):
        assert model.config._attn_implementation == default
        assert torch.equal(_logits(model, ids, mask), _logits(reference, ids, mask))
    assert model.config._attn_implementation == fastops.ATTENTION_NAME


def test_a_model_refusing_the_attention_keeps_its_own(tiny_classifier, monkeypatch):
    """When set_attn_implementation fails, only the hidden dropouts are swapped, and evaluation's
    standard_attention() leaves the model's attention alone instead of failing."""
    model, reference = _classifier(tiny_classifier), _classifier(tiny_classifier)
    default = model.config._attn_implementation

    def refuse(name):
        raise ValueError(f"{name} is not supported")

    monkeypatch.setattr(model, "set_attn_implementation", refuse)
    swapped = fastops.install(model)
    assert swapped > 0 and all(type(m) is not torch.nn.Dropout for m in model.modules())
    assert model.config._attn_implementation == default
    ids = torch.tensor([[2, 7, 9, 11, 3, 0]])
    with fastops.standard_attention(model):
        out = _logits(model, ids, (ids != 0).long())
    assert torch.equal(out, _logits(reference, ids, (ids != 0).long()))  # eval: dropout off, same attention
