"""N:M semi-structured magnitude pruning: each group of 4 keeps its 2 largest, reached gradually; bad patterns."""

import pytest
import torch

from distill.errors import ConfigError
from distill.prune.magnitude import MagnitudePruning
from distill.prune.patterns import candidates, parse_pattern, semi_structured_masks
from distill.prune.sparsity import prunable_linears, sparsity

from .test_sparse_export import small_bert


def reference_2_4(weight: torch.Tensor) -> torch.Tensor:
    """Plain loops: in every group of 4 consecutive weights of a row, zero the 2 smallest |w|."""
    out = weight.clone()
    for r in range(weight.shape[0]):
        for g in range(0, weight.shape[1], 4):
            group = [(abs(float(weight[r, g + i])), i) for i in range(4)]
            for _, i in sorted(group)[:2]:
                out[r, g + i] = 0.0
    return out


def test_candidates_are_the_two_smallest_of_each_group():
    w = torch.tensor([[4.0, -1.0, 0.5, 3.0, -9.0, 8.0, 0.1, -0.2]])
    assert candidates(w, 2, 4).tolist() == [[False, True, True, False, False, False, True, True]]


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_2_4_keeps_the_two_largest_of_every_four(scope):
    model = small_bert(seed=3)
    before = [m.weight.detach().clone() for m in prunable_linears(model)]
    MagnitudePruning(sparsity=0.5, pattern="2:4", scope=scope).prune_to(model, 0.5)
    for w0, layer in zip(before, prunable_linears(model), strict=True):
        assert torch.equal(layer.weight, reference_2_4(w0))
        assert (layer.weight.reshape(-1, 4) == 0).sum(-1).eq(2).all()
    assert sparsity(prunable_linears(model)) == 0.5
    assert model.classifier.weight.ne(0).all()


def test_2_4_is_reached_gradually_and_only_among_candidates():
    torch.manual_seed(0)
    weights = [torch.randn(8, 16), torch.randn(4, 32) * 3]
    masks = semi_structured_masks(weights, 0.25, 2, 4, "global")
    pruned = [(1 - m).bool() for m in masks]
    assert sum(int(p.sum()) for p in pruned) == round(0.25 * 256)
    for w, p in zip(weights, pruned, strict=True):
        assert not (p & ~candidates(w, 2, 4)).any()  # never a weight outside the 2 smallest of its group
    # global: the pruned candidates are the smallest candidates over both layers
    cand = torch.cat([w.abs()[candidates(w, 2, 4)] for w in weights])
    kept_cands = torch.cat([w.abs()[candidates(w, 2, 4) & ~p] for w, p in zip(weights, pruned, strict=True)])
    assert torch.cat([w.abs()[p] for w, p in zip(weights, pruned, strict=True)]).max() <= kept_cands.min()
    assert cand.numel() == 128
    per_layer = semi_structured_masks(weights, 0.25, 2, 4, "layer")
    assert [int((1 - m).sum()) for m in per_layer] == [32, 32]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"pattern": "3:2"}, "callbacks.magnitude_pruning.pattern='3:2' is not allowed; use unstructured or N:M"),
    ({"pattern": "block"}, "callbacks.magnitude_pruning.pattern='block' is not allowed"),
    ({"pattern": "2:4", "sparsity": 0.9}, "callbacks.magnitude_pruning.sparsity=0.9 does not match pattern=2:4, "
                                          "which keeps 2 of every 4 weights; set sparsity=0.5."),
])
def test_bad_patterns(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MagnitudePruning(**kwargs)


def test_a_layer_width_not_in_groups_of_m_is_refused():
    model = small_bert()
    callback = MagnitudePruning(sparsity=0.333, pattern="2:3")
    with pytest.raises(ConfigError, match=r"layer bert.encoder.layer.0.attention.self.query has 32 inputs, not a "
                                          r"multiple of 3; the N:M pattern groups consecutive inputs, so use "
                                          r"pattern=unstructured for this student."):
        callback.check_student(model)
    assert parse_pattern("unstructured", "k") is None and parse_pattern("2:4", "k") == (2, 4)
