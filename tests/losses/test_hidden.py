"""Hidden-state terms: TinyBERT MSE (with projection) and DistilBERT cosine, masked over padding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig
from transformers.modeling_outputs import SequenceClassifierOutput as Out

from distill.errors import ConfigError
from distill.losses import HiddenCosine, HiddenStateMSE

MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])  # (B=2, T=4): two padded positions


def states(layers: int, width: int, seed: int, dtype=torch.float32) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(2, 4, width, generator=g, dtype=dtype) for _ in range(layers + 1))


def out(hidden) -> Out:
    return Out(logits=torch.zeros(hidden[0].shape[0], 2, dtype=hidden[0].dtype), hidden_states=hidden)


def config(hidden: int, layers: int) -> BertConfig:
    return BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2)


def test_pinned_values():
    batch = {"attention_mask": torch.tensor([[1]])}
    s, t = out((torch.tensor([[[1.0, 2.0]]]),)), out((torch.tensor([[[0.0, 0.0]]]),))
    # embeddings only (a 0-layer map is just (0, 0)): (1² + 2²)/2
    mse = HiddenStateMSE(layer_map={"strategy": "explicit", "pairs": [[0, 0]]})
    assert mse(s, t, batch, 1.0).item() == pytest.approx(2.5)
    s, t = out((torch.tensor([[[1.0, 0.0]]]),)), out((torch.tensor([[[1.0, 1.0]]]),))
    cos = HiddenCosine(layer_map={"strategy": "explicit", "pairs": [[0, 0]]})
    assert cos(s, t, batch, 1.0).item() == pytest.approx(1 - 1 / math.sqrt(2))  # 1 − cos 45°


def test_mse_matches_reference_loop_and_masks_padding():
    hs, ht = states(2, 8, 0), states(4, 8, 1)
    batch = {"attention_mask": MASK}
    term = HiddenStateMSE()  # uniform 2 → 4 plus embeddings: (0,0), (1,2), (2,4)
    ref = 0.0
    for ls, lt in [(0, 0), (1, 2), (2, 4)]:
        errs = [((hs[ls][b, i] - ht[lt][b, i]) ** 2).mean() for b in range(2) for i in range(4) if MASK[b, i]]
        ref += torch.stack(errs).mean().item()
    assert term(out(hs), out(ht), batch, 1.0).item() == pytest.approx(ref, rel=1e-5)
    assert HiddenStateMSE(layer_reduction="mean")(out(hs), out(ht), batch, 1.0).item() == pytest.approx(
        ref / 3, rel=1e-5
    )
    # padded positions hold garbage (even NaN): loss and gradients unchanged and finite
    noisy_s = tuple(h.clone() for h in hs)
    for h in noisy_s:
        h[1, 2:] = float("nan")
    leaf = noisy_s[1].requires_grad_()
    loss = term(out(noisy_s), out(ht), batch, 1.0)
    assert loss.item() == pytest.approx(ref, rel=1e-5)
    loss.backward()
    assert torch.isfinite(leaf.grad).all() and (leaf.grad[1, 2:] == 0).all()


def test_cosine_reference_and_zero_when_equal():
    hs, ht = states(3, 8, 2), states(3, 8, 3)
    batch = {"attention_mask": MASK}
    keep = MASK.bool()
    ref = (1 - F.cosine_similarity(hs[3][keep], ht[3][keep], dim=-1)).mean()
    assert HiddenCosine()(out(hs), out(ht), batch, 1.0).item() == pytest.approx(ref.item(), rel=1e-5)
    for term in (HiddenCosine(), HiddenStateMSE()):
        assert term(out(hs), out(hs), batch, 1.0).item() == pytest.approx(0.0, abs=1e-6)
    assert HiddenStateMSE()(out(hs), out(ht), {}, 1.0).item() > 0  # no attention_mask: every token counts


def test_projection_from_configs_and_ints():
    term = HiddenStateMSE(student_config=config(8, 2), teacher_config=config(12, 4))
    assert term.proj is not None and tuple(term.proj.weight.shape) == (12, 8)
    hs, ht = states(2, 8, 0), states(4, 12, 1)
    loss = term(out(hs), out(ht), {"attention_mask": MASK}, 1.0)
    loss.backward()
    assert term.proj.weight.grad is not None and term.proj.weight.grad.abs().sum() > 0
    assert HiddenStateMSE(student_hidden=8, teacher_hidden=12).proj is not None
    assert HiddenStateMSE(student_hidden=8, teacher_hidden=8).proj is None
    assert HiddenCosine(student_hidden=8, teacher_hidden=12, project=True).proj is not None


def test_width_errors():
    with pytest.raises(ConfigError, match="width 8 .student. and 12 .teacher.; set project: true"):
        HiddenCosine(student_hidden=8, teacher_hidden=12)
    with pytest.raises(ConfigError, match="student_hidden=16 contradicts the model config's hidden_size=8"):
        HiddenStateMSE(student_hidden=16, student_config=config(8, 2))
    with pytest.raises(ConfigError, match="pass student_config/teacher_config"):
        HiddenStateMSE()(out(states(2, 8, 0)), out(states(2, 12, 1)), {"attention_mask": MASK}, 1.0)
    with pytest.raises(
        ConfigError, match=r"HiddenStateMSE\.layer_map\.pairs\[0\] names teacher layer 5, .* 0\.\.4"
    ):
        HiddenStateMSE(layer_map={"strategy": "explicit", "pairs": [[1, 5]]},
                       student_config=config(8, 2), teacher_config=config(8, 4))  # fmt: skip
    with pytest.raises(ConfigError, match="layer_reduction='max' is not one of sum, mean"):
        HiddenStateMSE(layer_reduction="max")


def test_gradcheck_float64():
    batch = {"attention_mask": MASK}
    hs, ht = states(2, 4, 0, torch.float64), states(2, 6, 1, torch.float64)
    mse = HiddenStateMSE(student_hidden=4, teacher_hidden=6).double()
    s1 = hs[1].clone().requires_grad_()
    t1 = ht[1].clone().requires_grad_()

    def mse_fn(a, b):
        return mse(out((hs[0], a, hs[2])), out((ht[0], b, ht[2])), batch, 1.0)

    assert torch.autograd.gradcheck(mse_fn, (s1, t1))
    cos = HiddenCosine(layer_map={"strategy": "explicit", "pairs": [[1, 1]]})
    t1 = hs[2].clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: cos(out((hs[0], a)), out((hs[0], b)), batch, 1.0), (s1, t1))
