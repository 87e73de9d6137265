"""Fused, memory-lean temperature-scaled softmax KL divergence for logit distillation.

``softmax_kl(s, t, T)`` computes ``KL(softmax(t / T) || softmax(s / T))`` per row (times ``T**2`` by default)
and its gradient with respect to the student logits ``s`` in a single forward sweep:

* On CUDA a Triton kernel runs one program per row.  Pass 1 streams the row in vocabulary blocks and keeps
  online (running-max rescaled) log-sum-exp statistics of both distributions; pass 2 re-reads the row,
  accumulates the KL terms and writes ``d loss / d s`` once, in the student's dtype.  No ``N x V`` float32
  intermediate is allocated: the only ``N x V`` buffer is the gradient.
* On CPU (or any device without Triton) a chunked PyTorch implementation does the same row-chunk by
  row-chunk, so its float32 working set is bounded by one chunk (about 8 MB per temporary, ~48 MB in all).

The backward pass only multiplies the stored gradient, in place, by ``grad_output`` (times the reduction factor):
one small Triton kernel on the Triton path (float32 product, one rounding), a tensor op otherwise; no host
synchronisation, and no second ``N x V`` buffer.  Hence a graph through ``softmax_kl``
can be back-propagated once (``retain_graph=True`` followed by a second backward raises a RuntimeError).

Numerics (both paths use the same formulas, all accumulation in float32).  Rows are centred on their raw
maximum before the division by ``T``: ``a = (t - max t) / T``, ``b = (s - max s) / T``, ``d_t = sum exp(a)``,
``d_s = sum exp(b)`` (both in ``[1, V]``).  With ``r = (b - a) + log(d_t / d_s) = log(q / p)``,

    KL(p || q) = -E_p[r] + log E_p[exp(r)] = -E_p[r] + log1p(E_p[expm1(r)]).

The second term is 0 in exact arithmetic, but the identity holds for ``r`` shifted by any constant, so in
float32 it cancels the rounding error of the normalisers that would otherwise dominate when KL is small next
to ``log V`` (high temperature, nearly equal distributions): the loss keeps ~1e-7 relative accuracy from
``T = 0.1`` to ``T = 100``.  ``p * expm1(r)`` (a Taylor polynomial for ``|r| < 0.5``, ``q - p`` otherwise, scaled
by ``d_t``) is also the gradient ``q - p`` up to the factor ``T**2 / T``.

Entries where the teacher logit is ``-inf`` have ``p = 0``.  The student mass there, ``1 - Q``, is handled as
``KL(p || q) = KL(p || q') - log Q`` with ``q' = q / Q`` the student renormalised on the teacher support, so the
formula above applies unchanged to ``q'`` (without ``-inf`` teacher entries ``Q`` is exactly 1).  ``-inf`` at the
same positions in both inputs (a masked vocabulary entry) contributes 0 to the loss and gets gradient 0.

This module imports with ``torch`` alone; Triton is optional.  To run the Triton kernel on CPU tensors the
Triton interpreter must be enabled (``TRITON_INTERPRET=1``) before this module is first imported.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

try:  # Triton is optional: the module must import (and the CPU path work) without it.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # pragma: no cover - exercised only where triton is missing or broken
    triton = None
    tl = None
    HAS_TRITON = False

__all__ = ["HAS_TRITON", "SoftmaxKLLoss", "softmax_kl", "triton_interpreted"]

_REDUCTIONS = ("batchmean", "sum", "none")
_BACKENDS = ("auto", "triton", "torch")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# Target size (bytes) of one float32 (rows, V) temporary on the PyTorch path.  At most about six are alive at once,
# so a chunk's working set is ~48 MB: bounded, yet large enough that the ~17 multi-threaded ops per chunk stay few
# (smaller chunks ran as fast single-threaded but lost time to OpenMP barriers on a busy 2-core machine).
_TORCH_CHUNK_BYTES = 8 * 1024 * 1024
_FLT_MIN = torch.finfo(torch.float32).tiny  # smallest normal float32, the floor of the teacher-support mass
Tune = int | tuple[int, int] | dict | None  # launch overrides of the private ``_tune`` hook


# ----------------------------------------------------------------------------------------------------------
# Triton kernel
# ----------------------------------------------------------------------------------------------------------
if HAS_TRITON:

    @triton.jit
    def _softmax_kl_fwd_kernel(
        s_ptr,  # student logits, (N, V), unit stride along V
        t_ptr,  # teacher logits, (N, V), unit stride along V
        grad_ptr,  # out: d(per-row loss)/d s, (N, V), student dtype (unused when not WRITE_GRAD)
        loss_ptr,  # out: per-row loss, (N,), float32
        mask_ptr,  # row mask, (N,), bool/uint8 (unused when not HAS_MASK)
        s_row_stride,
        t_row_stride,
        g_row_stride,
        V,
        inv_temp,  # 1 / T
        loss_scale,  # T**2 if t2_scale else 1
        grad_scale,  # loss_scale / T
        HAS_MASK: tl.constexpr,
        WRITE_GRAD: tl.constexpr,
        BLOCK: tl.constexpr,
        VEC_STATS: tl.constexpr = False,  # pass 1: per-lane running statistics, reduced once per row
    ):
        row = tl.program_id(0).to(tl.int64)  # int64: row * stride can exceed 2**31 for large N x V
        s_row = s_ptr + row * s_row_stride
        t_row = t_ptr + row * t_row_stride
        g_row = grad_ptr + row * g_row_stride
        cols = tl.arange(0, BLOCK)  # (BLOCK,)
        neg_inf = float("-inf")

        valid = True
        if HAS_MASK:
            valid = tl.load(mask_ptr + row) != 0

        if valid:
            # ---- pass 1: online max / sum-exp of both rows, in raw-logit units (max is taken before / T) ----
            if VEC_STATS:
                # Each lane keeps its own running max and sums (two more exps per element, no block-wide
                # reductions or barriers inside the loop); the lanes are combined once at the end.
                mv_s = tl.full([BLOCK], neg_inf, tl.float32)  # (BLOCK,) per-lane running max of s
                mv_t = tl.full([BLOCK], neg_inf, tl.float32)  # (BLOCK,) per-lane running max of t
                dv_sp = tl.zeros([BLOCK], tl.float32)  # (BLOCK,) per-lane sums, as below
                dv_off = tl.zeros([BLOCK], tl.float32)
                dv_t = tl.zeros([BLOCK], tl.float32)
                for start in range(0, V, BLOCK):
                    offs = start + cols  # (BLOCK,)
                    inb = offs < V
                    s = tl.load(s_row + offs, mask=inb, other=neg_inf).to(tl.float32)  # (BLOCK,)
                    t = tl.load(t_row + offs, mask=inb, other=neg_inf).to(tl.float32)  # (BLOCK,)
                    mv_s_new = tl.maximum(mv_s, s)
                    mv_t_new = tl.maximum(mv_t, t)
                    cv_s = tl.where(mv_s_new == neg_inf, 0.0, mv_s_new)  # (BLOCK,) lane centres
                    cv_t = tl.where(mv_t_new == neg_inf, 0.0, mv_t_new)
                    alpha_s = tl.exp((mv_s - cv_s) * inv_temp)  # (BLOCK,) <= 1, 0 for a lane still all -inf
                    e_s = tl.exp((s - cv_s) * inv_temp)  # (BLOCK,)
                    dv_sp = dv_sp * alpha_s + tl.where(t != neg_inf, e_s, 0.0)
                    dv_off = dv_off * alpha_s + tl.where(t != neg_inf, 0.0, e_s)
                    dv_t = dv_t * tl.exp((mv_t - cv_t) * inv_temp) + tl.exp((t - cv_t) * inv_temp)
                    mv_s = mv_s_new
                    mv_t = mv_t_new
                m_s = tl.max(mv_s, axis=0)
                m_t = tl.max(mv_t, axis=0)
                c_s = tl.where(m_s == neg_inf, 0.0, m_s)
                c_t = tl.where(m_t == neg_inf, 0.0, m_t)
                # Re-centre every lane on the row centre (factor <= 1; empty lanes contribute 0, never 0 * inf).
                f_s = tl.exp((tl.where(mv_s == neg_inf, c_s, mv_s) - c_s) * inv_temp)  # (BLOCK,)
                f_t = tl.exp((tl.where(mv_t == neg_inf, c_t, mv_t) - c_t) * inv_temp)  # (BLOCK,)
                d_sp = tl.sum(tl.where(dv_sp > 0.0, dv_sp * f_s, 0.0), axis=0)
                d_off = tl.sum(tl.where(dv_off > 0.0, dv_off * f_s, 0.0), axis=0)
                d_t = tl.sum(tl.where(dv_t > 0.0, dv_t * f_t, 0.0), axis=0)
            else:
                m_s = tl.max(tl.full([BLOCK], neg_inf, tl.float32), axis=0)  # () running max of s
                m_t = tl.max(tl.full([BLOCK], neg_inf, tl.float32), axis=0)  # () running max of t
                d_sp = tl.sum(tl.zeros([BLOCK], tl.float32), axis=0)  # () sum exp((s - m_s) / T), teacher support
                d_off = tl.sum(tl.zeros([BLOCK], tl.float32), axis=0)  # () the same off it (where t = -inf)
                d_t = tl.sum(tl.zeros([BLOCK], tl.float32), axis=0)  # () sum exp((t - m_t) / T)
                for start in range(0, V, BLOCK):
                    offs = start + cols  # (BLOCK,)
                    inb = offs < V
                    s = tl.load(s_row + offs, mask=inb, other=neg_inf).to(tl.float32)  # (BLOCK,)
                    t = tl.load(t_row + offs, mask=inb, other=neg_inf).to(tl.float32)  # (BLOCK,)
                    m_s_new = tl.maximum(m_s, tl.max(s, axis=0))
                    m_t_new = tl.maximum(m_t, tl.max(t, axis=0))
                    # A still -inf max means every entry so far is -inf: centre on 0 so -inf - (-inf) never appears.
                    c_s = tl.where(m_s_new == neg_inf, 0.0, m_s_new)
                    c_t = tl.where(m_t_new == neg_inf, 0.0, m_t_new)
                    alpha_s = tl.exp((m_s - c_s) * inv_temp)
                    e_s = tl.exp((s - c_s) * inv_temp)  # (BLOCK,)
                    d_sp = d_sp * alpha_s + tl.sum(tl.where(t != neg_inf, e_s, 0.0), axis=0)
                    d_off = d_off * alpha_s + tl.sum(tl.where(t != neg_inf, 0.0, e_s), axis=0)
                    d_t = d_t * tl.exp((m_t - c_t) * inv_temp) + tl.sum(tl.exp((t - c_t) * inv_temp), axis=0)
                    m_s = m_s_new
                    m_t = m_t_new
                c_s = tl.where(m_s == neg_inf, 0.0, m_s)
                c_t = tl.where(m_t == neg_inf, 0.0, m_t)
            # q' = q / Q is the student renormalised on the teacher support, Q = d_sp / d_s.  Without -inf teacher
            # entries d_off is exactly 0, so d_s == d_sp bit for bit and Q == 1 exactly.  The floor only keeps an
            # all-underflowed support mass (Q below FLT_MIN: the student ignores the teacher's whole support)
            # finite.  The floor is FLT_MIN itself: Triton <= 3.6 types a literal below it as float64, which would
            # turn the pass-2 accumulators into float64 and fail to compile.
            d_s = d_sp + d_off
            d_sp = tl.maximum(d_sp, 1.1754943508222875e-38)
            # The per-row divisions are IEEE (div_rn): Triton's `/` on float32 is the approximate div.full.f32,
            # whose d_s / d_sp for d_s == d_sp can miss 1 by an ulp, adding T**2 * 2**-24 to every row's loss
            # (measured on an H200: loss 6e-4 for identical rows at T = 100, 9e-4 relative error for close ones).
            shift = tl.log(tl.div_rn(d_t, d_sp))  # () log(q'/p) = (b - a) + shift; accurate when d_t ~ d_sp
            log_d_s = tl.log(d_s)
            neg_log_q = tl.log(tl.div_rn(d_s, d_sp))  # () -log Q >= 0, exactly 0 without teacher -inf entries
            one_minus_q = tl.div_rn(d_off, d_s)  # () 1 - Q
            grad_mul = tl.div_rn(grad_scale, d_t)

            # ---- pass 2: KL = -E_p[r] + log E_p[exp(r)] - log Q with r = log(q' / p) (module docstring) ----
            acc_e = tl.zeros([BLOCK], tl.float32)  # (BLOCK,) sum of exp(a)
            acc_r = tl.zeros([BLOCK], tl.float32)  # (BLOCK,) sum of exp(a) * r
            acc_x = tl.zeros([BLOCK], tl.float32)  # (BLOCK,) sum of exp(a) * expm1(r) on the teacher support
            for start in range(0, V, BLOCK):
                offs = start + cols  # (BLOCK,)
                inb = offs < V
                s = tl.load(s_row + offs, mask=inb, other=neg_inf).to(tl.float32)  # (BLOCK,)
                t = tl.load(t_row + offs, mask=inb, other=neg_inf).to(tl.float32)  # (BLOCK,)
                supp = t != neg_inf  # (BLOCK,) teacher support
                a = (t - c_t) * inv_temp  # (BLOCK,) teacher, centred: p = exp(a) / d_t
                b = (s - c_s) * inv_temp  # (BLOCK,) student, centred: q = exp(b) / d_s
                # tl.exp is the hardware ex2.approx on GPUs: libdevice's exp here changed no error on an H200
                # (docs/benchmarks/softmax_kl_gpu_notes.md) and cost 15% in bf16.
                e_t = tl.exp(a)  # (BLOCK,) = p * d_t
                w = tl.exp(tl.where(supp, b + shift, b - log_d_s))  # (BLOCK,) q' * d_t (<= V) on supp, else q
                r = (b - a) + shift  # (BLOCK,) log(q' / p); NaN where s = t = -inf
                # expm1(r) by its Taylor series where |r| < 0.5: diff = e_t * expm1(r) = w - e_t, no cancellation.
                poly = 2.48015873015873e-05  # 1/8!
                poly = poly * r + 1.984126984126984e-04  # 1/7!
                poly = poly * r + 1.388888888888889e-03  # 1/6!
                poly = poly * r + 8.333333333333333e-03  # 1/5!
                poly = poly * r + 4.166666666666666e-02  # 1/4!
                poly = poly * r + 1.666666666666667e-01  # 1/3!
                poly = poly * r + 0.5
                poly = poly * r + 1.0
                diff = tl.where(tl.abs(r) < 0.5, e_t * (poly * r), w - e_t)  # (BLOCK,) (q' - p) * d_t on supp
                acc_e += e_t
                acc_r += tl.where(e_t > 0.0, e_t * r, 0.0)
                acc_x += tl.where(supp, diff, 0.0)
                if WRITE_GRAD:
                    # q - p = (q' - p) - q' (1 - Q) on the support, q off it.
                    g = tl.where(supp, (diff - w * one_minus_q) * grad_mul, w * grad_scale)  # (BLOCK,)
                    tl.store(g_row + offs, g.to(grad_ptr.dtype.element_ty), mask=inb)
            e_sum = tl.sum(acc_e, axis=0)
            mean_r = tl.div_rn(tl.sum(acc_r, axis=0), e_sum)  # E_p[r]
            # E_p[exp(r)] - 1 = sum(q') - 1: 0 up to rounding (clamped: only a broken support mass gets near +-1).
            x = tl.minimum(tl.maximum(tl.div_rn(tl.sum(acc_x, axis=0), e_sum), -0.5), 0.5)
            # log1p(x): alternating series where |x| < 0.1 (tl.log(1 + x) would lose the digits that matter).
            ser = -0.125
            ser = ser * x + 1.428571428571429e-01
            ser = ser * x - 1.666666666666667e-01
            ser = ser * x + 0.2
            ser = ser * x - 0.25
            ser = ser * x + 3.333333333333333e-01
            ser = ser * x - 0.5
            ser = ser * x + 1.0
            log1p_x = tl.where(tl.abs(x) < 0.1, ser * x, tl.log(1.0 + x))
            tl.store(loss_ptr + row, (log1p_x - mean_r + neg_log_q) * loss_scale)
        else:
            # Masked row: loss 0 and gradient 0; its logits are never read.
            tl.store(loss_ptr + row, 0.0)
            if WRITE_GRAD:
                zeros = tl.zeros([BLOCK], tl.float32)  # (BLOCK,)
                for start in range(0, V, BLOCK):
                    offs = start + cols  # (BLOCK,)
                    tl.store(g_row + offs, zeros.to(grad_ptr.dtype.element_ty), mask=offs < V)


if HAS_TRITON:

    @triton.jit
    def _scale_rows_kernel(
        g_ptr,  # in/out: (N, V) gradient, unit stride along V, any float dtype
        f_ptr,  # (N,) float32 factors, or one (f_row_stride = 0)
        V,
        g_row_stride,
        f_row_stride,
        BLOCK: tl.constexpr,
    ):
        """g[n, :] *= f[n] in place, the product in float32 and rounded once (one read, one write of g)."""
        row = tl.program_id(0).to(tl.int64)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # (BLOCK,)
        inb = cols < V
        factor = tl.load(f_ptr + row * f_row_stride)  # ()
        ptrs = g_ptr + row * g_row_stride + cols  # (BLOCK,)
        g = tl.load(ptrs, mask=inb, other=0.0).to(tl.float32)  # (BLOCK,)
        tl.store(ptrs, (g * factor).to(g_ptr.dtype.element_ty), mask=inb)


def _scale_rows_(grad: torch.Tensor, factor: torch.Tensor, use_triton: bool) -> torch.Tensor:
    """``grad *= factor`` in place; grad ``(N, V)``, factor ``(N, 1)`` or ``(1, 1)`` float32 (on grad's device).

    On the Triton path one kernel reads and writes the buffer once.  (PyTorch's in-place multiply of a half
    tensor by a float32 one takes its unvectorised mixed-dtype loop: 1 TB/s on an H200, a quarter of a copy.)
    """
    if not use_triton or grad.numel() == 0:
        return grad.mul_(factor)
    factor = factor.to(torch.float32).reshape(-1).contiguous()  # (N,) or (1,)
    block = 4096 if not triton_interpreted() else triton.next_power_of_2(max(grad.shape[1], 16))
    grid = (grad.shape[0], triton.cdiv(grad.shape[1], block))
    _scale_rows_kernel[grid](
        grad, factor, grad.shape[1], grad.stride(0), 1 if factor.numel() > 1 else 0, BLOCK=block, num_warps=4
    )
    return grad


def triton_interpreted() -> bool:
    """True when the Triton kernel was built for the Triton interpreter (``TRITON_INTERPRET=1`` at import)."""
    if not HAS_TRITON:
        return False
    return type(_softmax_kl_fwd_kernel).__name__ == "InterpretedFunction"


def _triton_launch_config(vocab: int, dtype: torch.dtype, interpreted: bool, tune: Tune = None) -> dict:
    """Launch settings for a vocabulary of ``vocab`` entries: ``block``, ``num_warps``, ``vec_stats``.

    ``tune`` overrides them: a block size, ``(block, num_warps)``, or a dict with any of the keys."""
    if isinstance(tune, int):
        tune = {"block": tune}
    elif isinstance(tune, tuple):
        tune = {"block": tune[0], "num_warps": tune[1]}
    tune = tune or {}
    if interpreted:  # the interpreter runs each block as numpy ops with a large fixed cost: use big blocks
        block = tune.get("block") or min(triton.next_power_of_2(vocab), 32768)
        num_warps = 1
    else:
        # 2048-wide blocks with 8 warps: on an H200 (16,384 x 128,256, forward + backward) they beat the 4096 /
        # 8192-wide blocks by 7-20% in bf16 and fp32 (docs/benchmarks/softmax_kl.md, launch sweep).  1024 / 4
        # warps was 4-9% faster still there, but is unmeasured at other vocabulary sizes, so not the default yet.
        block = tune.get("block") or max(min(triton.next_power_of_2(vocab), 2048), 128)
        num_warps = tune.get("num_warps") or (16 if block >= 8192 else (8 if block >= 2048 else 4))
    return {"block": block, "num_warps": num_warps, "vec_stats": tune.get("vec_stats", False)}


def _triton_rows(
    student: torch.Tensor,
    teacher: torch.Tensor,
    row_mask: torch.Tensor | None,
    temperature: float,
    t2_scale: bool,
    need_grad: bool,
    block_size: Tune = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-row loss and gradient with the Triton kernel.

    Args:
        student, teacher: ``(N, V)`` with unit stride along ``V``; float32/float16/bfloat16.
        row_mask: ``(N,)`` bool or ``None``.
        block_size: launch overrides (see ``_triton_launch_config``); ``None`` picks them all.

    Returns:
        ``(loss, grad)``: loss ``(N,)`` float32 (``T**2``-scaled when ``t2_scale``, masked rows 0) and grad
        ``(N, V)`` in ``student.dtype`` holding ``d loss[n] / d student[n]`` (``None`` unless ``need_grad``).
    """
    n_rows, vocab = student.shape
    interpreted = triton_interpreted()
    cfg = _triton_launch_config(vocab, student.dtype, interpreted, block_size)
    loss = torch.empty(n_rows, dtype=torch.float32, device=student.device)  # (N,)
    grad = torch.empty_like(student, memory_format=torch.contiguous_format) if need_grad else None  # (N, V)
    if n_rows == 0:
        return loss, grad
    loss_scale = temperature * temperature if t2_scale else 1.0
    mask_arg = row_mask.view(torch.uint8) if row_mask is not None else loss  # dummy pointer when no mask
    _softmax_kl_fwd_kernel[(n_rows,)](
        student,
        teacher,
        grad if grad is not None else student,  # dummy pointer when no gradient is written
        loss,
        mask_arg,
        student.stride(0),
        teacher.stride(0),
        grad.stride(0) if grad is not None else 0,
        vocab,
        1.0 / temperature,
        loss_scale,
        loss_scale / temperature,
        HAS_MASK=row_mask is not None,
        WRITE_GRAD=need_grad,
        BLOCK=cfg["block"],
        VEC_STATS=cfg["vec_stats"],
        num_warps=cfg["num_warps"],
    )
    return loss, grad


# ----------------------------------------------------------------------------------------------------------
# Chunked PyTorch path
# ----------------------------------------------------------------------------------------------------------
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
    """Per-row loss and gradient with chunked PyTorch ops (same contract and formulas as ``_triton_rows``).

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
        # Student mass on the teacher support, see the Triton kernel (q' = q / Q, Q = d_sp / d_s).
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


# ----------------------------------------------------------------------------------------------------------
# Autograd glue and public API
# ----------------------------------------------------------------------------------------------------------
class _SoftmaxKLFunction(torch.autograd.Function):
    """Forward computes the loss and the (unit-upstream) student gradient; backward only rescales it."""

    @staticmethod
    def forward(
        ctx, student, teacher, row_mask, temperature, reduction, t2_scale, use_triton, need_grad, tune
    ):
        # student, teacher: (N, V); row_mask: (N,) bool or None.
        rows_fn = _triton_rows if use_triton else _torch_rows
        loss, grad = rows_fn(
            student, teacher, row_mask, temperature, t2_scale, need_grad, tune
        )  # (N,), (N, V)
        if reduction == "none":
            out = loss  # (N,)
            count = None
        elif reduction == "sum":
            out = loss.sum()  # ()
            count = None
        else:
            if row_mask is None:
                count = torch.full((), float(max(student.shape[0], 1)), device=loss.device)  # ()
            else:
                count = row_mask.sum().clamp_(min=1).to(torch.float32)  # (), stays on device: no sync
            out = loss.sum() / count  # ()
        ctx.reduction = reduction
        ctx.count = count
        ctx.use_triton = use_triton
        # Kept as a plain attribute (not save_for_backward): backward scales it in place and hands it over.
        ctx.grad_buffer = grad  # (N, V) student dtype, or None
        ctx.consumed = False
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        grad = ctx.grad_buffer  # (N, V) student dtype; d loss_row / d student for a unit upstream gradient
        if ctx.consumed:
            raise RuntimeError(
                "softmax_kl: backward ran twice through the same graph (retain_graph=True); its gradient buffer "
                "is scaled in place to save memory, so recompute the loss instead."
            )
        if grad is None or not ctx.needs_input_grad[0]:
            return (None,) * 9
        ctx.grad_buffer, ctx.consumed = None, True
        if ctx.reduction == "none":
            factor = grad_out.reshape(-1, 1)  # (N, 1)
        elif ctx.reduction == "sum":
            factor = grad_out.reshape(1, 1)  # (1, 1)
        else:
            factor = (grad_out / ctx.count).reshape(1, 1)  # (1, 1)
        # In place: the gradient is the only N x V buffer in the whole forward + backward.  The (., 1) float32
        # factor is not 0-dim, so the product is computed in float32 and rounded once to the gradient dtype.
        return (_scale_rows_(grad, factor, ctx.use_triton),) + (None,) * 8


def _check_args(student, teacher, temperature, mask, reduction, backend) -> None:
    if not isinstance(student, torch.Tensor) or not isinstance(teacher, torch.Tensor):
        raise ValueError("student_logits and teacher_logits must be torch.Tensors.")
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
    if backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}.")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)):
        raise ValueError(f"temperature must be a Python number, got {type(temperature).__name__}.")
    if not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {temperature}.")
    if student.shape != teacher.shape:
        raise ValueError(
            f"student_logits and teacher_logits must have the same shape, got {tuple(student.shape)} "
            f"and {tuple(teacher.shape)}."
        )
    if student.dim() not in (2, 3):
        raise ValueError(f"logits must be (N, V) or (B, T, V), got shape {tuple(student.shape)}.")
    if student.dtype not in _DTYPES or teacher.dtype not in _DTYPES:
        raise ValueError(
            f"logits must be float32, float16 or bfloat16, got {student.dtype} and {teacher.dtype}."
        )
    if student.device != teacher.device:
        raise ValueError(f"logits must be on one device, got {student.device} and {teacher.device}.")
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError("mask must be a bool tensor over the leading dims of the logits.")
        if mask.shape != student.shape[:-1]:
            raise ValueError(
                f"mask must have the leading-dims shape {tuple(student.shape[:-1])}, got {tuple(mask.shape)}."
            )
        if mask.device != student.device:
            raise ValueError(f"mask must be on the logits' device {student.device}, got {mask.device}.")


def _resolve_backend(backend: str, device: torch.device) -> bool:
    """True to use the Triton kernel, False for the PyTorch path; raises if ``"triton"`` cannot run."""
    if backend == "torch":
        return False
    if backend == "auto":
        return HAS_TRITON and device.type == "cuda" and not triton_interpreted()
    if not HAS_TRITON:
        raise ValueError("backend='triton' needs the triton package, which is not importable here.")
    if device.type != "cuda" and not triton_interpreted():
        raise ValueError(
            "backend='triton' on non-CUDA tensors needs the Triton interpreter: set TRITON_INTERPRET=1 "
            "before distill.kernels is first imported."
        )
    return True


def softmax_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    temperature: float = 1.0,
    *,
    mask: torch.Tensor | None = None,
    reduction: str = "batchmean",
    t2_scale: bool = True,
    backend: str = "auto",
    _tune: Tune = None,
) -> torch.Tensor:
    """Temperature-scaled distillation loss ``KL(softmax(t / T) || softmax(s / T))``, fused and memory-lean.

    Args:
        student_logits: ``(N, V)`` or ``(B, T, V)``; float32, float16 or bfloat16.  Gradients flow into it and
            come back in its dtype.
        teacher_logits: same shape (any of those dtypes); treated as a constant (no gradient).
        temperature: ``T > 0`` (a Python number).
        mask: optional bool tensor with the leading-dims shape (``(N,)`` or ``(B, T)``); ``False`` rows are
            ignored (loss 0, gradient 0, their logits may hold anything).
        reduction: ``"batchmean"`` (sum over rows / number of unmasked rows; 0 if there are none), ``"sum"``,
            or ``"none"`` (per-row losses of the leading-dims shape, masked rows 0).
        t2_scale: multiply the loss by ``T**2``.
        backend: ``"auto"`` (Triton kernel for CUDA tensors, chunked PyTorch otherwise), ``"triton"`` (on CPU
            tensors this needs ``TRITON_INTERPRET=1`` set before import) or ``"torch"``.
        _tune: private test / benchmark hook: Triton launch overrides (a block size, ``(block, num_warps)`` or
            a dict, see ``_triton_launch_config``), or the PyTorch path's rows per chunk.

    Returns:
        float32 loss: a scalar, or the leading-dims shape for ``reduction="none"``.  All accumulation is in
        float32.  The student gradient is computed during the forward pass (one ``N x V`` buffer in the
        student dtype), so the forward costs slightly more than a plain loss and the backward is a multiply.
    """
    _check_args(student_logits, teacher_logits, temperature, mask, reduction, backend)
    use_triton = _resolve_backend(backend, student_logits.device)
    temperature = float(temperature)
    lead = student_logits.shape[:-1]
    vocab = student_logits.shape[-1]
    student = student_logits.reshape(-1, vocab)  # (N, V)
    teacher = teacher_logits.detach().reshape(-1, vocab)  # (N, V)
    if student.shape[0] > 0 and student.stride(-1) != 1:
        student = student.contiguous()
    if teacher.shape[0] > 0 and teacher.stride(-1) != 1:
        teacher = teacher.contiguous()
    row_mask = None if mask is None else mask.reshape(-1).contiguous()  # (N,)
    need_grad = torch.is_grad_enabled() and student_logits.requires_grad
    out = _SoftmaxKLFunction.apply(
        student, teacher, row_mask, temperature, reduction, t2_scale, use_triton, need_grad, _tune
    )
    return out.reshape(lead) if reduction == "none" else out


class SoftmaxKLLoss(nn.Module):
    """``nn.Module`` wrapper of :func:`softmax_kl` (same arguments, fixed at construction)."""

    def __init__(
        self,
        temperature: float = 1.0,
        reduction: str = "batchmean",
        t2_scale: bool = True,
        backend: str = "auto",
    ) -> None:
        super().__init__()
        if reduction not in _REDUCTIONS:
            raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}.")
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}.")
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"temperature must be a Python number > 0, got {temperature!r}.")
        self.temperature = float(temperature)
        self.reduction = reduction
        self.t2_scale = t2_scale
        self.backend = backend

    def forward(
        self,
        student_logits: torch.Tensor,
        teacher_logits: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss for ``(N, V)`` / ``(B, T, V)`` logits and an optional bool mask over the leading dims."""
        return softmax_kl(
            student_logits,
            teacher_logits,
            self.temperature,
            mask=mask,
            reduction=self.reduction,
            t2_scale=self.t2_scale,
            backend=self.backend,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, reduction={self.reduction!r}, t2_scale={self.t2_scale}, "
            f"backend={self.backend!r}"
        )
