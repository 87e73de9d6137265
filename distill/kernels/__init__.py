"""Fused kernels for distillation losses (importable with torch alone; Triton optional)."""

from distill.kernels.reference import softmax_kl_reference
from distill.kernels.softmax_kl import SoftmaxKLLoss, softmax_kl
from distill.kernels.triton_kl import HAS_TRITON, triton_interpreted

__all__ = ["HAS_TRITON", "SoftmaxKLLoss", "softmax_kl", "softmax_kl_reference", "triton_interpreted"]
