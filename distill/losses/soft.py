"""Soft-target losses on the prediction layer: temperature-scaled KL (through the fused kernel)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from distill.kernels.softmax_kl import softmax_kl


class SoftTargetKL(nn.Module):
    """KL(softmax(t/T) ‖ softmax(s/T)), times T² when ``t2_scale`` (Hinton et al.; the HF DistilBERT script).

    TextBrewer and TinyBERT's code do not multiply by T²; with ``t2_scale: false`` the soft term's
    gradient shrinks as 1/T² relative to the hard term, which changes the effective weight α.
    Logits (B, C) or (B, T, C) in any float dtype; computed by :func:`distill.kernels.softmax_kl`
    with the selected ``backend`` (``auto`` uses Triton on CUDA, the chunked PyTorch path on CPU).
    For a regression head (C == 1) a softmax is meaningless, so the term falls back to MSE on logits.
    """

    requires: frozenset[str] = frozenset()

    def __init__(self, t2_scale: bool = True, backend: str = "auto") -> None:
        super().__init__()
        self.t2_scale = t2_scale
        self.backend = backend

    def forward(self, student, teacher, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        s, t = student.logits, teacher.logits  # (B, C)
        if s.shape[-1] == 1:
            return F.mse_loss(s.float(), t.float())
        return softmax_kl(s, t, temperature, t2_scale=self.t2_scale, backend=self.backend)
