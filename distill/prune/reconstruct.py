"""Refit the weights a pruning mask keeps so the layer's outputs stay as close as they can to the dense ones.

After a mask zeroes some of row ``i``'s weights, the kept ones ``S`` are refitted by ridge least squares on
recorded inputs ``X``: ``min ||X w_dense - X_S w_S||² + λ ||w_S - w_dense,S||²``, i.e.
``(G_SS + λI) w_S = G_S: w_dense + λ w_dense,S`` with ``G = XᵀX``; ``λ`` is ``damping`` times the mean of
``G``'s diagonal (SparseGPT's dampening; Frantar & Alistarh 2023 solve the same problem row by row with a
mask chosen along the way, here the mask is magnitude's, chosen first). The ridge pulls towards the current
values, not towards zero, so a few recorded batches (fewer tokens than inputs) move the weights little. Only the values change: zeros stay zeros, so the sparsity is exactly the mask's.
Written by hand because ``torch.nn.utils.prune`` and torchao's sparsifiers choose masks and leave the kept
values as they are.
"""

from __future__ import annotations

import torch
from torch import Tensor


@torch.no_grad()
def refit_kept_weights(dense: Tensor, mask: Tensor, gram: Tensor, damping: float = 0.01) -> Tensor:
    """``dense`` (out, in) weights before the mask, ``mask`` (out, in; 1 = kept), ``gram`` (in, in) = ``XᵀX``:
    the refitted weights, zero where the mask is 0, in ``dense``'s dtype."""
    g = gram.double()
    w = dense.double()
    lam = damping * g.diagonal().mean().clamp_min(1e-12)
    targets = w @ g + lam * w  # row i: G w_i + λ w_i (G symmetric), of which the S entries are the right-hand side
    g = g + lam * torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    keep = mask.bool()
    out = torch.zeros_like(w)
    for i in range(w.shape[0]):
        kept = keep[i].nonzero().squeeze(1)
        if kept.numel():
            out[i, kept] = torch.linalg.solve(g[kept][:, kept], targets[i, kept])
    return out.to(dense.dtype)
