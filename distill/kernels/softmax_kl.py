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

This module holds the public API (argument checks, backend choice, the autograd Function); the two paths live in
``distill.kernels.triton_kl`` (kernels and launchers) and ``distill.kernels.torch_kl`` (chunked PyTorch).  It
imports with ``torch`` alone; Triton is optional.  To run the Triton kernel on CPU tensors the Triton interpreter
must be enabled (``TRITON_INTERPRET=1``) before this package is first imported.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from distill.kernels.torch_kl import _torch_rows
from distill.kernels.triton_kl import HAS_TRITON, Tune, _scale_rows_, _triton_rows, triton_interpreted

__all__ = ["HAS_TRITON", "SoftmaxKLLoss", "softmax_kl", "triton_interpreted"]

_REDUCTIONS = ("batchmean", "sum", "none")
_BACKENDS = ("auto", "triton", "torch")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


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
            a dict, see ``triton_kl._triton_launch_config``), or the PyTorch path's rows per chunk.

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
