"""Soft-target variants on the prediction layer: reverse KL, generalized (skew) JSD, logit MSE.

All take logits (B, C) or (B, T, C) in any float dtype, divide by the temperature T, and do the
softmax/log math in float32 (float64 inputs stay float64, for gradcheck). Distribution losses are
summed over classes and averaged over rows (``batchmean``). For a regression head (C == 1) a softmax
is meaningless; like :class:`~distill.losses.SoftTargetKL`, the distribution losses fall back to MSE.
``student_config``/``teacher_config`` are accepted (the pipeline passes them to every term) and ignored.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from distill.errors import ConfigError
from distill.losses._common import f32


def _scaled_log_probs(student, teacher, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-flattened log-softmax of logits / T for student and teacher: two (N, C) tensors."""
    s = f32(student.logits).flatten(0, -2) / temperature  # (N, C)
    t = f32(teacher.logits).flatten(0, -2).to(s.dtype) / temperature  # (N, C)
    return F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1)  # (N, C), (N, C)


def _kl_rows(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row from log-probabilities (N, C) -> (N,)."""
    return (log_p.exp() * (log_p - log_q)).sum(dim=-1)  # (N,)


def _regression(student, teacher) -> torch.Tensor | None:
    if student.logits.shape[-1] != 1:
        return None
    return F.mse_loss(f32(student.logits), f32(teacher.logits).to(f32(student.logits).dtype))


class ReverseKL(nn.Module):
    """Reverse KL, KL(softmax(s/T) ‖ softmax(t/T)): mode-seeking (the student may drop teacher modes).

    Times T² when ``t2_scale`` (keeps gradient size independent of T, as for forward KL).
    """

    requires: frozenset[str] = frozenset()

    def __init__(self, t2_scale: bool = True, student_config=None, teacher_config=None) -> None:
        super().__init__()
        self.t2_scale = bool(t2_scale)

    def forward(self, student, teacher, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        reg = _regression(student, teacher)
        if reg is not None:
            return reg
        log_s, log_t = _scaled_log_probs(student, teacher, temperature)  # (N, C) each
        loss = _kl_rows(log_s, log_t).mean()  # ()
        return loss * temperature**2 if self.t2_scale else loss


class GeneralizedJSD(nn.Module):
    """β-skew Jensen–Shannon divergence of Agarwal et al. (GKD, 2024), on softmax(·/T).

    With teacher p, student q and mixture ``m = β·p + (1−β)·q``:
    ``JSD_β = β·KL(p ‖ m) + (1−β)·KL(q ‖ m)``. β = 0.5 is the symmetric JSD (bounded by ln 2);
    small β behaves like forward KL and β near 1 like reverse KL (both scaled down), so β must be in
    the open interval (0, 1) — use :class:`~distill.losses.SoftTargetKL` / :class:`ReverseKL` for the
    endpoints. ``log m`` is a logsumexp of the two log-probabilities (no log of a sum of probabilities).
    Times T² when ``t2_scale``.
    """

    requires: frozenset[str] = frozenset()

    def __init__(
        self, beta: float = 0.5, t2_scale: bool = True, student_config=None, teacher_config=None
    ) -> None:
        super().__init__()
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 < beta < 1.0:
            raise ConfigError(
                f"GeneralizedJSD.beta={beta!r} must be in (0, 1); use SoftTargetKL (β→0) or ReverseKL (β→1)."
            )
        self.beta = float(beta)
        self.t2_scale = bool(t2_scale)

    def forward(self, student, teacher, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        reg = _regression(student, teacher)
        if reg is not None:
            return reg
        log_q, log_p = _scaled_log_probs(student, teacher, temperature)  # student q, teacher p: (N, C)
        log_m = torch.logaddexp(log_p + math.log(self.beta), log_q + math.log1p(-self.beta))  # (N, C)
        rows = self.beta * _kl_rows(log_p, log_m) + (1.0 - self.beta) * _kl_rows(log_q, log_m)  # (N,)
        loss = rows.mean()  # ()
        return loss * temperature**2 if self.t2_scale else loss


class LogitMSE(nn.Module):
    """MSE between temperature-scaled logits, ``mean((s/T − t/T)²)`` over all elements (TextBrewer's kd_mse).

    TextBrewer does not rescale, so the loss and its gradient shrink as 1/T²; ``t2_scale=True``
    multiplies by T², which equals plain ``mean((s − t)²)`` and makes T irrelevant. Works for any C
    (regression heads included).
    """

    requires: frozenset[str] = frozenset()

    def __init__(self, t2_scale: bool = False, student_config=None, teacher_config=None) -> None:
        super().__init__()
        self.t2_scale = bool(t2_scale)

    def forward(self, student, teacher, batch: dict[str, torch.Tensor], temperature: float) -> torch.Tensor:
        s = f32(student.logits) / temperature  # (B, C)
        t = f32(teacher.logits).to(s.dtype) / temperature  # (B, C)
        loss = F.mse_loss(s, t)  # ()
        return loss * temperature**2 if self.t2_scale else loss
