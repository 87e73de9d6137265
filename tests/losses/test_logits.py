"""Soft-target variants on logits: pinned values, inline references, symmetry, masking-free, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.modeling_outputs import SequenceClassifierOutput as Out

from distill.errors import ConfigError
from distill.losses import GeneralizedJSD, LogitMSE, ReverseKL

BATCH: dict = {}
LN3 = math.log(3.0)


def kl(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Reference KL(p ‖ q) from probabilities, mean over rows."""
    return (p * (p / q).log()).sum(-1).mean()


def test_pinned_values():
    # teacher softmax([ln 3, 0]) = [3/4, 1/4]; student softmax([0, 0]) = [1/2, 1/2]
    s, t = Out(logits=torch.tensor([[0.0, 0.0]])), Out(logits=torch.tensor([[LN3, 0.0]]))
    # KL(s ‖ t) = ½ ln(½ / ¾) + ½ ln(½ / ¼)
    assert ReverseKL()(s, t, BATCH, 1.0).item() == pytest.approx(0.14384103622589042, abs=1e-6)
    # m = [5/8, 3/8]; ½·KL(t ‖ m) + ½·KL(s ‖ m)
    assert GeneralizedJSD(0.5)(s, t, BATCH, 1.0).item() == pytest.approx(0.033822075568605205, abs=1e-6)
    # ((1 − 3)/2)² = 1, ((2 + 2)/2)² = 4 → mean 2.5; × T² = 10
    s, t = Out(logits=torch.tensor([[1.0, 2.0]])), Out(logits=torch.tensor([[3.0, -2.0]]))
    assert LogitMSE()(s, t, BATCH, 2.0).item() == pytest.approx(2.5)
    assert LogitMSE(t2_scale=True)(s, t, BATCH, 2.0).item() == pytest.approx(10.0)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_against_inline_reference(temperature):
    g = torch.Generator().manual_seed(0)
    s_logits, t_logits = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g) * 2
    s, t = Out(logits=s_logits), Out(logits=t_logits)
    p_s, p_t = (s_logits / temperature).softmax(-1), (t_logits / temperature).softmax(-1)
    t2 = temperature**2
    assert ReverseKL()(s, t, BATCH, temperature).item() == pytest.approx(t2 * kl(p_s, p_t).item(), rel=1e-5)
    assert ReverseKL(t2_scale=False)(s, t, BATCH, temperature).item() == pytest.approx(
        kl(p_s, p_t).item(), rel=1e-5
    )
    beta = 0.3
    m = beta * p_t + (1 - beta) * p_s
    ref = beta * kl(p_t, m) + (1 - beta) * kl(p_s, m)
    assert GeneralizedJSD(beta)(s, t, BATCH, temperature).item() == pytest.approx(t2 * ref.item(), rel=1e-5)
    ref_mse = ((s_logits - t_logits) / temperature).pow(2).mean()
    assert LogitMSE()(s, t, BATCH, temperature).item() == pytest.approx(ref_mse.item(), rel=1e-5)


def test_zero_when_equal_and_symmetric_jsd():
    logits = torch.randn(3, 4)
    same = Out(logits=logits)
    for term in (ReverseKL(), GeneralizedJSD(0.2), LogitMSE()):
        assert term(same, Out(logits=logits.clone()), BATCH, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    a, b = Out(logits=torch.randn(3, 4)), Out(logits=torch.randn(3, 4))
    jsd = GeneralizedJSD(0.5)
    assert jsd(a, b, BATCH, 1.0).item() == pytest.approx(jsd(b, a, BATCH, 1.0).item(), rel=1e-6)
    assert jsd(a, b, BATCH, 1.0).item() <= math.log(2)


def test_dtypes_shapes_and_regression_head():
    s, t = (
        Out(logits=torch.randn(2, 3, 5).bfloat16()),
        Out(logits=torch.randn(2, 3, 5).bfloat16()),
    )  # (B, T, C)
    for term in (ReverseKL(), GeneralizedJSD(), LogitMSE()):
        out = term(s, t, BATCH, 2.0)
        assert out.dtype == torch.float32 and out.dim() == 0
    s, t = Out(logits=torch.tensor([[1.0], [2.0]])), Out(logits=torch.tensor([[2.0], [2.0]]))
    assert ReverseKL()(s, t, BATCH, 2.0).item() == pytest.approx(0.5)  # MSE fallback, as SoftTargetKL


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.randn(3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    for term in (ReverseKL(), GeneralizedJSD(0.3), LogitMSE(t2_scale=True)):
        assert torch.autograd.gradcheck(
            lambda a, b, term=term: term(Out(logits=a), Out(logits=b), BATCH, 2.0), (s, t)
        )


@pytest.mark.parametrize("beta", [0.0, 1.0, -0.5, True])
def test_jsd_beta_must_be_open_interval(beta):
    with pytest.raises(ConfigError, match=r"GeneralizedJSD\.beta=.* must be in \(0, 1\)"):
        GeneralizedJSD(beta)


@pytest.mark.parametrize(
    "cls, value",
    [
        (ReverseKL, 0.14384103622589042),  # the pinned values of test_pinned_values
        (GeneralizedJSD, 0.033822075568605205),  # default beta = 0.5
        (LogitMSE, LN3**2 / 2),  # ((0 − ln 3)² + 0²) / 2, no T² by default
    ],
)
def test_model_configs_are_accepted_and_ignored(cls, value):
    """The pipeline passes ``student_config``/``teacher_config`` to every term; these terms ignore them."""
    s, t = Out(logits=torch.tensor([[0.0, 0.0]])), Out(logits=torch.tensor([[LN3, 0.0]]))
    term = cls(student_config=object(), teacher_config=object())
    assert not list(term.parameters()) and not term.state_dict()  # nothing built from the configs
    assert term(s, t, BATCH, 1.0).item() == pytest.approx(value, abs=1e-6)
    assert term(s, t, BATCH, 1.0).item() == cls()(s, t, BATCH, 1.0).item()
