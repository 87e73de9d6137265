"""Triton kernels of the fused softmax KL divergence, their launch configuration and launchers.

``_triton_rows`` runs ``_softmax_kl_fwd_kernel`` (one program per row: per-row loss and, in the same sweep, the
student gradient); ``_scale_rows_`` applies the upstream gradient in place (``_scale_rows_kernel``).  The
formulas, and why they are accurate in float32, are in the docstring of :mod:`distill.kernels.softmax_kl`.

This module imports with ``torch`` alone; Triton is optional (``HAS_TRITON``).  To run the kernels on CPU tensors
the Triton interpreter must be enabled (``TRITON_INTERPRET=1``) before this module is first imported.
"""

from __future__ import annotations

import torch

try:  # Triton is optional: the module must import (and the CPU path work) without it.
    import triton
    import triton.language as tl

    HAS_TRITON = True
except Exception:  # pragma: no cover - exercised only where triton is missing or broken
    triton = None
    tl = None
    HAS_TRITON = False


Tune = int | tuple[int, int] | dict | None  # launch overrides of the private ``_tune`` hook


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
                d_sp = tl.sum(tl.zeros([BLOCK], tl.float32), axis=0)  # () sum exp((s - m_s) / T), t > -inf
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

            # ---- pass 2: KL = -E_p[r] + log E_p[exp(r)] - log Q with r = log(q' / p) (softmax_kl.py) ----
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
