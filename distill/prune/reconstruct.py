"""Refit the weights a pruning mask keeps so the layer's outputs stay as close as they can to the dense ones.

After a mask zeroes some of row ``i``'s weights, the kept ones ``S`` are refitted by ridge least squares on
recorded inputs ``X``: ``min ||X w_dense - X_S w_S||² + λ ||w_S - w_dense,S||²``, i.e.
``(G_SS + λI) w_S = (H w_dense)_S`` with ``G = XᵀX`` and ``H = G + λI``; ``λ`` is ``damping`` times the mean
of ``G``'s diagonal (SparseGPT's dampening; Frantar & Alistarh 2023 solve the same problem with a mask chosen
along the way, here the mask is magnitude's, chosen first). The ridge pulls towards the current values, not
towards zero, so a few recorded batches (fewer tokens than inputs) move the weights little. Only the values
change: zeros stay zeros, so the sparsity is exactly the mask's.

Each row is solved on whichever side of its mask is smaller: on the kept set ``S`` directly, or — the
Optimal Brain Surgeon form of the same optimum — ``w = w_dense - H⁻¹[:, P] (H⁻¹[P, P])⁻¹ w_dense,P`` over the
pruned set ``P`` with ``H⁻¹`` computed once per layer; early steps of a gradual schedule prune few weights, so
their updates stay cheap. Written by hand because ``torch.nn.utils.prune`` and torchao's sparsifiers choose
masks and leave the kept values as they are.
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
    h = g + damping * g.diagonal().mean().clamp_min(1e-12) * torch.eye(g.shape[0], dtype=g.dtype, device=g.device)
    targets = w @ h  # row i: (H w_i)ᵀ (H symmetric), whose S entries are the right-hand side on the kept side
    keep = mask.bool()
    out = torch.zeros_like(w)
    h_inv = None
    for i in range(w.shape[0]):
        kept, pruned = keep[i].nonzero().squeeze(1), (~keep[i]).nonzero().squeeze(1)
        if kept.numel() == 0:
            continue
        if pruned.numel() == 0:
            out[i] = w[i]
        elif kept.numel() <= pruned.numel():
            out[i, kept] = torch.linalg.solve(h[kept][:, kept], targets[i, kept])
        else:
            if h_inv is None:
                h_inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
            step = torch.linalg.solve(h_inv[pruned][:, pruned], w[i, pruned])
            out[i] = w[i] - h_inv[:, pruned] @ step
            out[i, pruned] = 0.0  # exactly zero (the formula gives ~1e-16)
    return out.to(dense.dtype)
