"""Hard-label losses: cross-entropy for classification heads, MSE for regression heads."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class HardLabelLoss(nn.Module):
    """Cross-entropy on logits (B, C) with int64 labels (B,); MSE when C == 1 (regression, float labels)."""

    requires: frozenset[str] = frozenset()

    def forward(self, student, teacher, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        logits = student.logits  # (B, C)
        labels = batch["labels"]  # (B,)
        if logits.shape[-1] == 1:
            return F.mse_loss(logits.squeeze(-1).float(), labels.float())
        return F.cross_entropy(logits.float(), labels)
