"""Sparsity as it is measured: which linear layers count, and the share of exact zeros in their stored weights.

One definition for the magnitude-pruning callback (what it prunes, :mod:`distill.prune.magnitude`) and the
report's ``sparsity`` column (:mod:`distill.report.rows`): the weights of the model's ``nn.Linear`` layers
except the task head (``classifier``) and the pooler, so a student pruned to 50% reads 50.0%. Quantized
weights count as stored: a torchao ``Int8Tensor`` by its int8 values (``qdata``; symmetric, so 0 is 0.0),
another tensor subclass by its dequantized values.
"""

from __future__ import annotations

import torch
from torch import nn

SKIPPED = ("classifier", "pooler")  # the task head and the pooler are never pruned


def named_prunable_linears(model: nn.Module, skip: tuple[str, ...] = SKIPPED) -> list[tuple[str, nn.Linear]]:
    """(name, layer) of the linear layers of ``model`` whose weights are pruned and counted (not the task head
    or the pooler)."""
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(part in skip for part in name.split("."))]


def prunable_linears(model: nn.Module, skip: tuple[str, ...] = SKIPPED) -> list[nn.Linear]:
    """The layers of :func:`named_prunable_linears`."""
    return [m for _, m in named_prunable_linears(model, skip)]


def stored_weight(module: nn.Module) -> torch.Tensor:
    """``module.weight`` as stored: int8 values of a torchao ``Int8Tensor``, dequantized values of another
    tensor subclass that has ``dequantize``, else the plain tensor."""
    weight = module.weight
    if type(weight) not in (torch.Tensor, nn.Parameter):
        qdata = getattr(weight, "qdata", None)
        if isinstance(qdata, torch.Tensor):
            return qdata
        if hasattr(weight, "dequantize"):
            return weight.dequantize()
    return weight.detach()


def zero_count(modules: list[nn.Module]) -> tuple[int, int]:
    """(exact zeros, weights) over the stored weights of ``modules``."""
    zeros = total = 0
    for m in modules:
        w = stored_weight(m)
        zeros += int((w == 0).sum())
        total += w.numel()
    return zeros, total


def sparsity(modules: list[nn.Module]) -> float:
    """Fraction of exact zeros in the weights of ``modules`` (0.0 when there are none)."""
    zeros, total = zero_count(modules)
    return zeros / max(1, total)


def model_sparsity(model: nn.Module | None) -> float | None:
    """Share of exact zeros in the weights of ``model``'s pruned linear layers; ``None`` without any."""
    if model is None:
        return None
    zeros, total = zero_count(prunable_linears(model))
    return zeros / total if total else None
