"""Semi-structured ``N:M`` sparsity masks: in each group of ``M`` consecutive weights of a row (along the input
dimension), at most ``M - N`` are zero and the ``N`` largest by magnitude are kept. ``2:4`` is the pattern
NVIDIA's sparse tensor cores (Ampere and later) run faster; on CPU it saves nothing at run time.

Reached gradually like unstructured pruning: at an intermediate ``amount`` (a fraction of all weights, up to
``1 - N/M``) only *candidates* are pruned, the ``M - N`` smallest of each group, smallest first (over all
layers or per layer); at ``amount = 1 - N/M`` every candidate is pruned and the pattern holds exactly. The
masks are applied with ``torch.nn.utils.prune.custom_from_mask`` (:mod:`distill.prune.magnitude`); torchao's
``to_sparse_semi_structured`` needs CUDA, so it is left to the GPU user.
"""

from __future__ import annotations

import re

import torch
from torch import Tensor

from distill.errors import ConfigError

_PATTERN = re.compile(r"^(\d+):(\d+)$")


def parse_pattern(pattern: str, key: str) -> tuple[int, int] | None:
    """``"unstructured"`` → None; ``"N:M"`` → (N, M) with 1 <= N < M; anything else: one sentence."""
    if pattern == "unstructured":
        return None
    match = _PATTERN.match(str(pattern))
    if match is None or not 1 <= int(match[1]) < int(match[2]):
        raise ConfigError(f"{key}={pattern!r} is not allowed; use unstructured or N:M with 1 <= N < M (2:4 for "
                          "NVIDIA's sparse tensor cores).")
    return int(match[1]), int(match[2])


def candidates(weight: Tensor, n: int, m: int) -> Tensor:
    """(out, in) bool: the ``m - n`` smallest-magnitude weights of every group of ``m`` consecutive weights of a
    row (ties: the earlier one); ``in`` must be a multiple of ``m``."""
    rows, cols = weight.shape
    groups = weight.detach().abs().reshape(rows, cols // m, m)
    smallest = groups.argsort(dim=-1, stable=True)[..., : m - n]
    return torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, smallest, True).reshape(rows, cols)


def semi_structured_masks(weights: list[Tensor], amount: float, n: int, m: int, scope: str) -> list[Tensor]:
    """Keep-masks (1 = kept, float, like ``torch.nn.utils.prune``'s) pruning ``amount`` of the weights among
    the ``N:M`` candidates, by magnitude over all ``weights`` (``global``) or in each (``layer``)."""
    amount = min(amount, 1.0 - n / m)
    cands = [candidates(w, n, m) for w in weights]
    if scope == "layer":
        return [_prune_smallest([w], [c], amount)[0] for w, c in zip(weights, cands, strict=True)]
    return _prune_smallest(weights, cands, amount)


def _prune_smallest(weights: list[Tensor], cands: list[Tensor], amount: float) -> list[Tensor]:
    total = sum(w.numel() for w in weights)
    k = min(round(amount * total), sum(int(c.sum()) for c in cands))
    magnitudes = torch.cat([torch.where(c, w.detach().abs(), torch.inf).reshape(-1) for w, c in
                            zip(weights, cands, strict=True)])
    pruned = torch.zeros_like(magnitudes, dtype=torch.bool)
    if k > 0:
        pruned[torch.topk(magnitudes, k, largest=False).indices] = True
    masks, start = [], 0
    for w in weights:
        masks.append((~pruned[start:start + w.numel()]).reshape(w.shape).to(w.dtype))
        start += w.numel()
    return masks


def check_divisible(shapes: dict[str, tuple[int, int]], m: int, key: str) -> None:
    """Every pruned layer's input width must be a multiple of ``m``; else one sentence naming the layer."""
    bad = next(((name, shape) for name, shape in shapes.items() if shape[1] % m), None)
    if bad is not None:
        raise ConfigError(f"{key}: layer {bad[0]} has {bad[1][1]} inputs, not a multiple of {m}; the N:M pattern "
                          "groups consecutive inputs, so use pattern=unstructured for this student.")
