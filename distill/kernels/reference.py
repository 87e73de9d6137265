"""Plain PyTorch reference for the temperature-scaled softmax KL divergence.

This is the oracle the tests compare the fused implementations against.  It favours clarity over speed and
memory: it materialises several full-size temporaries in ``compute_dtype`` (float64 by default).
"""

from __future__ import annotations

import torch

_REDUCTIONS = ("batchmean", "sum", "none")


def softmax_kl_reference(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    *,
    mask: torch.Tensor | None = None,
    reduction: str = "batchmean",
    t2_scale: bool = True,
    compute_dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Reference ``KL(softmax(t / T) || softmax(s / T))`` (times ``T**2`` when ``t2_scale``).

    Args:
        student_logits: ``(N, V)`` or ``(B, T, V)``, any floating dtype; gradients flow into it.
        teacher_logits: same shape as ``student_logits``; detached.
        temperature: ``T > 0``.
        mask: optional bool tensor over the leading dims (``(N,)`` or ``(B, T)``); ``False`` rows are ignored.
        reduction: ``"batchmean"`` (mean over unmasked rows, 0 if none), ``"sum"`` or ``"none"``
            (per-row losses with the leading-dims shape, masked rows 0).
        t2_scale: multiply by ``T**2`` (Hinton et al.) so gradient magnitudes do not shrink with ``T``.
        compute_dtype: dtype of every intermediate and of the result (float64 by default).

    Returns:
        A ``compute_dtype`` scalar, or a tensor of the leading-dims shape for ``reduction="none"``.
    """
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    lead = student_logits.shape[:-1]
    vocab = student_logits.shape[-1]
    s = student_logits.reshape(-1, vocab).to(compute_dtype)  # (N, V)
    t = teacher_logits.detach().reshape(-1, vocab).to(compute_dtype)  # (N, V)
    rows = (
        torch.ones(s.shape[0], dtype=torch.bool, device=s.device) if mask is None else mask.reshape(-1)
    )  # (N,)
    s_sel, t_sel = s[rows], t[rows]  # (M, V) each, M = number of kept rows
    log_q = torch.log_softmax(s_sel / temperature, dim=-1)  # (M, V)
    log_p = torch.log_softmax(t_sel / temperature, dim=-1)  # (M, V)
    p = log_p.exp()  # (M, V)
    # Positions with p == 0 contribute 0 (also where both logits are -inf and log_p - log_q is NaN).
    terms = torch.where(p > 0, p * (log_p - log_q), torch.zeros_like(p))  # (M, V)
    kept = terms.sum(dim=-1)  # (M,)
    if t2_scale:
        kept = kept * (temperature * temperature)
    per_row = torch.zeros(s.shape[0], dtype=compute_dtype, device=s.device).index_put((rows,), kept)  # (N,)
    if reduction == "none":
        return per_row.reshape(lead)
    total = per_row.sum()  # ()
    if reduction == "sum":
        return total
    return total / max(int(rows.sum()), 1)
