"""Chunked PyTorch path of the fused softmax KL divergence (CPU, or any device without Triton).

``_torch_rows`` has the contract and the formulas of the Triton launcher
``distill.kernels.triton_kl._triton_rows`` (see the docstring of :mod:`distill.kernels.softmax_kl`), computed
row-chunk by row-chunk so that the float32 working set is bounded by one chunk.
"""

from __future__ import annotations

import torch

# Target size (bytes) of one float32 (rows, V) temporary on the PyTorch path.  At most about six are alive at once,
# so a chunk's working set is ~48 MB: bounded, yet large enough that the ~17 multi-threaded ops per chunk stay few
# (smaller chunks ran as fast single-threaded but lost time to OpenMP barriers on a busy 2-core machine).
_TORCH_CHUNK_BYTES = 8 * 1024 * 1024
_FLT_MIN = torch.finfo(torch.float32).tiny  # smallest normal float32, the floor of the teacher-support mass


def _auto_chunk_rows(vocab: int) -> int:
    """Rows per chunk so that one float32 ``(rows, V)`` temporary is about ``_TORCH_CHUNK_BYTES``."""
    return max(1, _TORCH_CHUNK_BYTES // (4 * max(vocab, 1)))


def _centred(x: torch.Tensor, row_max: torch.Tensor, inv_temp: float) -> torch.Tensor:
    """``(x - max x) / T`` row-wise in float32 (rows that are all ``-inf`` are centred on 0).

    Args:
        x: ``(R, V)`` logits, any float dtype (not modified).
        row_max: ``(R, 1)`` row maxima of ``x``.

    Returns:
        ``(R, V)`` float32.
    """
    row_max = row_max.float()  # (R, 1)
    row_max = torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max)  # (R, 1)
    centred = torch.sub(x.float(), row_max)  # (R, V) float32
    return centred.mul_(inv_temp) if inv_temp != 1.0 else centred


def _torch_rows(
    student: torch.Tensor,
    teacher: torch.Tensor,
    row_mask: torch.Tensor | None,
    temperature: float,
    t2_scale: bool,
    need_grad: bool,
    chunk_rows: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row loss and gradient with chunked PyTorch ops (contract and formulas of ``triton_kl._triton_rows``).

    Args:
        student, teacher: ``(N, V)``; float32/float16/bfloat16.
        row_mask: ``(N,)`` bool or ``None``.
        chunk_rows: rows per chunk; ``None`` picks ``_auto_chunk_rows(V)``.

    Returns:
        ``(loss (N,) float32, grad (N, V) student.dtype or None)``.
    """
    n_rows, vocab = student.shape
    chunk = chunk_rows or _auto_chunk_rows(vocab)
    inv_temp = 1.0 / temperature
    loss_scale = temperature * temperature if t2_scale else 1.0
    grad_scale = loss_scale * inv_temp
    neg_inf = float("-inf")
    loss = torch.zeros(n_rows, dtype=torch.float32, device=student.device)  # (N,)
    grad = torch.empty_like(student, memory_format=torch.contiguous_format) if need_grad else None  # (N, V)
    for lo in range(0, n_rows, chunk):
        hi = min(lo + chunk, n_rows)
        keep = None if row_mask is None else row_mask[lo:hi, None]  # (R, 1) bool
        if keep is not None and not bool(keep.any()):
            if grad is not None:
                grad[lo:hi].zero_()
            continue
        t_chunk, s_chunk = teacher[lo:hi], student[lo:hi]  # (R, V) each
        # -inf teacher entries (rare) take the general formulas.  (amin + amax: aminmax is far slower on CPU.)
        holes = bool(t_chunk.amin() == neg_inf)
        supp = t_chunk != neg_inf if holes else None  # (R, V) bool: teacher support
        # At most three (R, V) float32 temporaries are alive on the common path: b, e and a/r (diff reuses b).
        b = _centred(s_chunk, s_chunk.amax(dim=-1, keepdim=True), inv_temp)  # (R, V): q = exp(b) / d_s
        e = b.exp()  # (R, V) = q * d_s
        d_s = e.sum(dim=-1, keepdim=True)  # (R, 1)
        # Student mass on the teacher support, as in the Triton kernel (q' = q / Q, Q = d_sp / d_s).
        d_sp = (
            e.masked_fill_(~supp, 0.0).sum(dim=-1, keepdim=True).clamp_(min=_FLT_MIN) if holes else d_s
        )  # (R, 1)
        a = _centred(t_chunk, t_chunk.amax(dim=-1, keepdim=True), inv_temp)  # (R, V): p = exp(a) / d_t
        e_t = torch.exp(a, out=e)  # (R, V) = p * d_t; reuses e
        d_t = e_t.sum(dim=-1, keepdim=True)  # (R, 1)
        shift = torch.log(d_t / d_sp)  # (R, 1)
        # q' * d_t on the support, q off it (only needed with holes, or where r is large).
        w = torch.where(supp, b + shift, b - torch.log(d_s)).exp_() if holes else None  # (R, V)
        r = torch.sub(b, a, out=a).add_(shift)  # (R, V) log(q' / p); reuses a
        # diff = e_t * expm1(r) = (q' - p) * d_t, without cancellation for small |r|; where r is large, +inf or
        # NaN (p underflows, or t = -inf) it is recomputed as q' * d_t - e_t.
        if holes or bool(r.amax() > 60.0):
            diff = torch.expm1(r).mul_(e_t)  # (R, V)
            far = ~(r <= 60.0)  # (R, V) bool
            diff[far] = (w[far] if w is not None else b.add_(shift)[far].exp_()) - e_t[far]
            del far
        else:
            diff = torch.expm1(r, out=b).mul_(e_t)  # (R, V); reuses b
        del a, b
        # E_p[r]: nansum drops 0 * inf (p underflowed to 0 where s = -inf, or t = s = -inf).
        mean_r = torch.nansum(r.mul_(e_t), dim=-1) / d_t[:, 0]  # (R,); reuses r
        del r, e_t, e
        x = (torch.where(supp, diff, 0.0) if holes else diff).sum(dim=-1) / d_t[:, 0]  # (R,) E_p[e^r] - 1, ~0
        rows = (torch.log1p(x.clamp(-0.5, 0.5)) - mean_r) * loss_scale  # (R,)
        if holes:
            rows += torch.log(d_s / d_sp)[:, 0] * loss_scale  # -log Q
        if keep is not None:
            rows = torch.where(keep[:, 0], rows, 0.0)
        loss[lo:hi] = rows
        if grad is not None:
            out = grad[lo:hi]  # (R, V) student dtype
            if holes:  # q - p = (q' - p) - q' (1 - Q) on the support, q off it
                one_minus_q = (d_s - d_sp).clamp_(min=0.0) / d_s  # (R, 1)
                out.copy_(torch.where(supp, diff.sub_(w * one_minus_q).div_(d_t), w).mul_(grad_scale))
            else:
                torch.mul(diff, grad_scale / d_t, out=out)  # (q - p) * scale / T, cast to the student dtype
            if keep is not None:
                out.masked_fill_(~keep, 0.0)
    return loss, grad
