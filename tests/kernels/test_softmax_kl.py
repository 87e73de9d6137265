"""Tests of the fused softmax-KL loss (Triton kernel and chunked PyTorch path) against a float64 reference.

Without CUDA the Triton kernel runs under the Triton interpreter on CPU tensors, which must be enabled before
Triton is first imported; hence the environment tweak above the imports.  With CUDA the same tests run the
compiled kernel on the GPU, and the ``gpu``-marked tests add larger shapes.
"""

import importlib
import math
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # must happen before the first `import triton`

from distill.kernels import (
    HAS_TRITON,
    SoftmaxKLLoss,
    softmax_kl,
    softmax_kl_reference,
    torch_kl,
    triton_interpreted,
    triton_kl,
)

skl = importlib.import_module(
    "distill.kernels.softmax_kl"
)  # the module (the package attribute is the function)

pytestmark = pytest.mark.filterwarnings(
    "ignore:invalid value encountered:RuntimeWarning"
)  # interpreter NaN lanes

CUDA = torch.cuda.is_available()
TRITON_DEVICE = "cuda" if CUDA else "cpu"
requires_triton = pytest.mark.skipif(not HAS_TRITON, reason="triton is not importable")
requires_triton_runnable = pytest.mark.skipif(
    not HAS_TRITON or not (CUDA or triton_interpreted()),
    reason="triton is not importable, or there is no CUDA and TRITON_INTERPRET=1 was not set before triton was imported",
)
requires_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

BACKENDS = [
    pytest.param("torch", id="torch"),
    pytest.param("triton", id="triton", marks=requires_triton_runnable),
]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _device(backend: str) -> str:
    return TRITON_DEVICE if backend == "triton" else "cpu"


def _tol(dtype: torch.dtype, temperature: float = 1.0) -> float:
    """Relative-error targets of the spec: fp32 1e-5 (T <= 20) / 1e-3 (T = 100); half types 1e-2."""
    if dtype == torch.float32:
        return 1e-5 if temperature <= 20 else 1e-3
    return 1e-2


def _logits(shape, dtype=torch.float32, device="cpu", scale=3.0, seed=0, like=None, noise=1.0):
    """Random logits ``(..., V)``; with ``like`` given, ``like * 0.9 + noise * N(0, 1)`` (close distributions)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen) * scale  # (..., V) float32
    if like is not None:
        x = like.float().cpu() * 0.9 + x * (noise / scale)
    return x.to(device=device, dtype=dtype)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _run(backend, s, t, temperature=1.0, upstream=3.7, **kw):
    """Loss and student gradient of ``softmax_kl`` and of the float64 reference for the same inputs."""
    s1 = s.detach().clone().requires_grad_(True)
    loss = softmax_kl(s1, t, temperature, backend=backend, **kw)
    s2 = s.detach().clone().requires_grad_(True)
    ref = softmax_kl_reference(s2, t, temperature, **{k: v for k, v in kw.items() if k != "_tune"})
    if isinstance(upstream, torch.Tensor):
        (loss * upstream.to(loss.device, loss.dtype)).sum().backward()
        (ref * upstream.to(ref.device, ref.dtype)).sum().backward()
    else:
        (loss * upstream).backward()
        (ref * upstream).backward()
    assert loss.dtype == torch.float32
    assert s1.grad.dtype == s.dtype and s1.grad.shape == s.shape
    assert torch.isfinite(loss).all() and torch.isfinite(s1.grad).all()
    return loss, s1.grad, ref, s2.grad


# --------------------------------------------------------------------------------------------------------------
# Accuracy against the float64 reference
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(3, 1271), (2, 7, 301)], ids=["3x1271", "2x7x301"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_matches_reference(backend, shape, dtype, reduction):
    dev = _device(backend)
    s = _logits(shape, dtype, dev, seed=1)
    t = _logits(shape, dtype, dev, seed=2)
    upstream = (
        torch.randn(shape[:-1], generator=torch.Generator().manual_seed(3)) if reduction == "none" else 3.7
    )
    loss, grad, ref, ref_grad = _run(backend, s, t, 2.0, upstream, reduction=reduction)
    assert loss.shape == ref.shape == (shape[:-1] if reduction == "none" else ())
    assert _rel(loss, ref) <= _tol(dtype)
    assert _rel(grad, ref_grad) <= _tol(dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [0.1, 1.0, 4.0, 20.0, 100.0])
def test_temperatures_close_distributions(backend, temperature):
    """Nearly equal distributions (small KL next to log V) are the hard case for float32 cancellation."""
    dev = _device(backend)
    t = _logits((4, 2053), device=dev, seed=4)
    s = _logits((4, 2053), device=dev, seed=5, like=t, noise=0.5)
    loss, grad, ref, ref_grad = _run(backend, s, t, temperature)
    assert _rel(loss, ref) <= _tol(torch.float32, temperature)
    assert _rel(grad, ref_grad) <= _tol(torch.float32, temperature)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_bert_vocab_with_mask(backend, dtype):
    dev = _device(backend)
    shape = (2, 7, 30522)
    s = _logits(shape, dtype, dev, seed=6)
    t = _logits(shape, dtype, dev, seed=7, like=s, noise=2.0)
    mask = torch.rand(shape[:-1], generator=torch.Generator().manual_seed(8)) > 0.3  # (2, 7)
    mask[0, 0] = False
    loss, grad, ref, ref_grad = _run(backend, s, t, 2.0, mask=mask.to(dev))
    assert _rel(loss, ref) <= _tol(dtype)
    assert _rel(grad, ref_grad) <= _tol(dtype)
    assert (grad[~mask.to(dev)] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_vocab_262144(backend):
    dev = _device(backend)
    s = _logits((2, 262144), device=dev, seed=9)
    t = _logits((2, 262144), device=dev, seed=10)
    loss, grad, ref, ref_grad = _run(backend, s, t, 2.0, reduction="sum")
    assert _rel(loss, ref) <= 1e-5
    assert _rel(grad, ref_grad) <= 1e-5


@pytest.mark.parametrize(
    "backend, tune",
    [
        pytest.param("triton", 256, id="triton-block256", marks=requires_triton_runnable),
        pytest.param("triton", (512, 4), id="triton-block512-warps4", marks=requires_triton_runnable),
        pytest.param("triton", {"block": 256, "vec_stats": True}, id="triton-vec-stats",
                     marks=requires_triton_runnable),
        pytest.param("torch", 2, id="torch-chunk2"),
    ],
)
def test_multi_block_and_chunk_boundaries(backend, tune):
    """Small Triton blocks (5 blocks, ragged tail) / 2-row PyTorch chunks, with a mask straddling chunks."""
    dev = _device(backend)
    s = _logits((5, 1271), device=dev, seed=11)
    t = _logits((5, 1271), device=dev, seed=12)
    t[1, 1000:] = float("-inf")  # -inf only inside the last blocks
    mask = torch.tensor([True, True, False, True, True], device=dev)
    for reduction in ("batchmean", "none"):
        up = torch.linspace(-1, 2, 5) if reduction == "none" else 3.7
        loss, grad, ref, ref_grad = _run(backend, s, t, 1.5, up, mask=mask, reduction=reduction, _tune=tune)
        assert _rel(loss, ref) <= 1e-5
        assert _rel(grad, ref_grad) <= 1e-5


# --------------------------------------------------------------------------------------------------------------
# The compiled kernel (no GPU needed): what the interpreter cannot see
# --------------------------------------------------------------------------------------------------------------
def _kernel_float_literals() -> list[float]:
    import ast
    import inspect
    import textwrap

    fn = triton_kl._softmax_kl_fwd_kernel
    tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(fn, "fn", fn))))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, float)]


@requires_triton
def test_kernel_float_literals_are_float32_in_every_triton():
    """Triton <= 3.6 types a float literal outside float32's normal range (other than 0, inf, nan) as float64,
    which turns the loop accumulators into float64 and fails to compile (seen on an H200 with Triton 3.6; the
    interpreter and newer Triton accept it).  Every literal of the kernel must be safe there."""
    literals = _kernel_float_literals()
    assert 0.5 in literals and len(literals) > 10  # the scan sees the kernel's constants
    tiny, big = torch.finfo(torch.float32).tiny, torch.finfo(torch.float32).max
    bad = [x for x in literals if x == x and x not in (0.0, float("inf"), float("-inf")) and not tiny <= abs(x) <= big]
    assert not bad, f"float64 literals in the kernel: {bad}"


_COMPILE_SCRIPT = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from distill.kernels import triton_kl

dtype, vec_stats = sys.argv[1], sys.argv[2] == "1"
fwd_sig = {"s_ptr": f"*{dtype}", "t_ptr": f"*{dtype}", "grad_ptr": f"*{dtype}", "loss_ptr": "*fp32",
           "mask_ptr": "*u8", "s_row_stride": "i64", "t_row_stride": "i64", "g_row_stride": "i64", "V": "i32",
           "inv_temp": "fp32", "loss_scale": "fp32", "grad_scale": "fp32"}
fwd_const = {"HAS_MASK": True, "WRITE_GRAD": True, "BLOCK": 4096, "VEC_STATS": vec_stats}
scale_sig = {"g_ptr": f"*{dtype}", "f_ptr": "*fp32", "V": "i32", "g_row_stride": "i64", "f_row_stride": "i64"}
out = {}
for name, fn, sig, const in [("fwd", triton_kl._softmax_kl_fwd_kernel, fwd_sig, fwd_const),
                             ("scale", triton_kl._scale_rows_kernel, scale_sig, {"BLOCK": 4096})]:
    src = triton.compiler.ASTSource(fn=fn, signature=sig | dict.fromkeys(const, "constexpr"), constexprs=const)
    try:
        c = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 8})
    except RuntimeError as exc:
        if "ptxas" in str(exc).lower():
            print(json.dumps({"skip": str(exc)[:200]}))
            sys.exit(0)
        raise
    out[name] = {"cubin": len(c.asm["cubin"]), "stores": "st.global" in c.asm["ptx"],
                 "approx_div": "div.full.f32" in c.asm["ptx"]}
print(json.dumps(out))
"""


@requires_triton
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("vec_stats", [False, True], ids=["default", "vec-stats"])
def test_kernel_compiles_for_hopper(dtype, vec_stats, tmp_path):
    """Compile both kernels to machine code for sm_90 (H100/H200) with the installed Triton, no GPU needed:
    type errors that the interpreter lets through fail here.  In a fresh process without TRITON_INTERPRET (the
    interpreter replaces triton.language while it is on) and with an empty cache (a real compile).  Also: no
    approximate float32 division (Triton's `/`), which on an H200 added T**2 * 2**-24 to every row's loss."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp_path)
    proc = subprocess.run(
        [sys.executable, "-c", _COMPILE_SCRIPT, dtype, str(int(vec_stats))],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    if "skip" in result:
        pytest.skip(f"no ptxas: {result['skip']}")
    assert result["fwd"]["cubin"] > 0 and result["fwd"]["stores"]  # machine code that writes its outputs
    assert not result["fwd"]["approx_div"]  # IEEE divisions only (tl.div_rn)
    assert result["scale"]["cubin"] > 0 and result["scale"]["stores"]


@requires_triton_runnable
@pytest.mark.parametrize("temperature", [0.1, 1.0, 100.0])
def test_vec_stats_variant_edge_cases(temperature):
    """Per-lane pass-1 statistics: -inf in the teacher, in both inputs, lanes that only ever see -inf, and
    magnitudes of 1e4, against float64 (the default pass 1 is covered by the tests around it)."""
    s = _logits((4, 1300), device=TRITON_DEVICE, seed=60) * 1000  # up to ~1e4
    t = _logits((4, 1300), device=TRITON_DEVICE, seed=61) * 1000
    t[0, ::3] = float("-inf")  # teacher holes
    s[1, 100:400], t[1, 100:400] = float("-inf"), float("-inf")  # a masked vocabulary
    s[2, :256], t[2, :256] = float("-inf"), float("-inf")  # with block 256: every lane's first block is -inf
    tune = {"block": 256, "vec_stats": True}
    up = torch.linspace(0.5, 2.0, 4)  # (4,) per-row upstream gradient
    loss, grad, ref, ref_grad = _run("triton", s, t, temperature, up, reduction="none", _tune=tune)
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    assert _rel(loss, ref) <= _tol(torch.float32, temperature)
    assert _rel(grad, ref_grad) <= _tol(torch.float32, temperature)


@requires_triton_runnable
@pytest.mark.parametrize("reduction", ["batchmean", "none"])
def test_backward_scales_a_half_gradient_by_the_upstream_gradient(reduction):
    """The in-place backward multiply (a Triton kernel on the Triton path) applies per-row and scalar upstream
    gradients to a bfloat16 buffer within one rounding of the float32 product (RTNE on GPUs; the interpreter
    truncates, hence one full bf16 ulp)."""
    s = _logits((6, 777), torch.bfloat16, TRITON_DEVICE, seed=70).requires_grad_(True)
    t = _logits((6, 777), torch.bfloat16, TRITON_DEVICE, seed=71)
    unit = torch.autograd.grad(softmax_kl(s, t, 2.0, reduction="none", backend="triton").sum(), s)[0]  # (6, 777)
    assert unit.dtype == torch.bfloat16
    up = torch.linspace(-3.0, 5.0, 6) if reduction == "none" else torch.tensor(0.37)
    loss = softmax_kl(s, t, 2.0, reduction=reduction, backend="triton")
    (grad,) = torch.autograd.grad(loss, s, up.to(loss.device))
    assert grad.dtype == torch.bfloat16
    factor = up.reshape(-1, 1) if reduction == "none" else up / 6
    expected = unit.float().cpu() * factor  # (6, 777) float32
    torch.testing.assert_close(grad.float().cpu(), expected, rtol=2**-7, atol=0.0)


# --------------------------------------------------------------------------------------------------------------
# Edge cases
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_two_class_by_hand(backend):
    """p = (3/4, 1/4), q = (1/2, 1/2) at T = 2: KL = 3/4 ln(3/2) + 1/4 ln(1/2), times T^2 = 4."""
    dev = _device(backend)
    s = torch.zeros(1, 2, device=dev, requires_grad=True)
    t = torch.tensor([[2 * math.log(3.0), 0.0]], device=dev)
    kl = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)  # 0.130812...
    assert abs(kl - 0.1308120) < 1e-6
    loss = softmax_kl(s, t, 2.0, backend=backend)
    assert abs(loss.item() - 4 * kl) < 1e-6
    t64 = torch.tensor([[2 * math.log(3.0), 0.0]], dtype=torch.float64, device=dev)
    assert abs(softmax_kl_reference(s.double(), t64, 2.0).item() - 4 * kl) < 1e-12
    assert abs(softmax_kl(s, t, 2.0, t2_scale=False, backend=backend).item() - kl) < 1e-6
    loss.backward()
    # d/ds = T^2 / T * (q - p) = 2 * ((1/2, 1/2) - (3/4, 1/4)) = (-1/2, 1/2)
    torch.testing.assert_close(s.grad.cpu(), torch.tensor([[-0.5, 0.5]]), atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
def test_zero_when_student_equals_teacher(backend, dtype):
    dev = _device(backend)
    t = _logits((2, 3, 777), dtype, dev, seed=13)
    s = t.clone().requires_grad_(True)
    loss = softmax_kl(s, t, 3.0, backend=backend)
    loss.backward()
    assert abs(loss.item()) <= 1e-6
    assert s.grad.abs().max().item() <= 1e-6


@pytest.mark.parametrize("backend", BACKENDS)
def test_neg_inf_in_teacher(backend):
    """-inf teacher logits: p = 0 there, so those entries add nothing to the loss and get gradient T * q."""
    dev = _device(backend)
    s = _logits((4, 1000), device=dev, seed=14)
    t = _logits((4, 1000), device=dev, seed=15)
    t[torch.rand(4, 1000, generator=torch.Generator().manual_seed(16)).to(dev) < 0.3] = float("-inf")
    loss, grad, ref, ref_grad = _run(backend, s, t, 2.0)
    assert _rel(loss, ref) <= 1e-5
    assert _rel(grad, ref_grad) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
def test_neg_inf_in_both_is_a_masked_vocabulary(backend, dtype):
    """-inf at the same positions in both inputs equals dropping those columns; their gradient is exactly 0."""
    dev = _device(backend)
    s = _logits((3, 900), dtype, dev, seed=17)
    t = _logits((3, 900), dtype, dev, seed=18)
    cols = torch.rand(900, generator=torch.Generator().manual_seed(19)).to(dev) < 0.25  # (900,)
    s[:, cols] = float("-inf")
    t[:, cols] = float("-inf")
    loss, grad, ref, _ = _run(backend, s, t, 1.7)
    dropped = softmax_kl_reference(s[:, ~cols], t[:, ~cols], 1.7)
    assert _rel(loss, ref) <= _tol(dtype) and _rel(loss, dropped) <= _tol(dtype)
    assert (grad[:, cols] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("temperature", [0.1, 1.0, 100.0])
def test_large_magnitudes(backend, temperature):
    dev = _device(backend)
    gen = torch.Generator().manual_seed(20)
    s = ((torch.rand(3, 3000, generator=gen) * 2 - 1) * 1e4).to(dev)  # uniform in [-1e4, 1e4]
    t = ((torch.rand(3, 3000, generator=gen) * 2 - 1) * 1e4).to(dev)
    t[0] = s[0] + 1024.0  # a shifted copy (up to rounding): KL ~ 0 next to the other rows
    loss, grad, ref, ref_grad = _run(backend, s, t, temperature, reduction="none", upstream=torch.ones(3))
    assert _rel(loss, ref) <= _tol(torch.float32, temperature)
    assert _rel(grad, ref_grad) <= _tol(torch.float32, temperature)


@pytest.mark.parametrize("backend", BACKENDS)
def test_masked_rows_are_ignored_even_with_garbage(backend):
    dev = _device(backend)
    s = _logits((6, 500), device=dev, seed=21)
    t = _logits((6, 500), device=dev, seed=22)
    mask = torch.tensor([True, False, True, False, True, True], device=dev)
    s[1] = float("nan")
    t[1] = float("-inf")
    s[3] = float("inf")
    t[3] = 1e30
    upstream = torch.randn(6, generator=torch.Generator().manual_seed(23))
    loss, grad, ref, ref_grad = _run(backend, s, t, 2.0, upstream, mask=mask, reduction="none")
    assert (loss[~mask] == 0).all() and (grad[~mask] == 0).all()
    assert _rel(loss, ref) <= 1e-5 and _rel(grad, ref_grad) <= 1e-5
    loss, grad, ref, ref_grad = _run(backend, s, t, 2.0, 3.7, mask=mask)  # batchmean divides by 4 rows
    assert _rel(loss, ref) <= 1e-5 and _rel(grad, ref_grad) <= 1e-5


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reduction", ["batchmean", "sum", "none"])
def test_all_rows_masked(backend, reduction):
    dev = _device(backend)
    s = _logits((2, 3, 100), device=dev, seed=24).requires_grad_(True)
    t = _logits((2, 3, 100), device=dev, seed=25)
    loss = softmax_kl(s, t, 2.0, mask=torch.zeros(2, 3, dtype=torch.bool, device=dev), reduction=reduction)
    assert (loss == 0).all()
    loss.sum().backward()
    assert (s.grad == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend):
    dev = _device(backend)
    s = torch.zeros(0, 50, device=dev, requires_grad=True)
    loss = softmax_kl(s, torch.zeros(0, 50, device=dev), backend=backend)
    assert loss.item() == 0
    loss.backward()
    assert s.grad.shape == (0, 50)


# --------------------------------------------------------------------------------------------------------------
# Autograd behaviour, layouts, module wrapper, dispatch
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_teacher_gets_no_gradient_and_no_grad_mode(backend):
    dev = _device(backend)
    s = _logits((3, 64), device=dev, seed=26).requires_grad_(True)
    t = _logits((3, 64), device=dev, seed=27).requires_grad_(True)
    softmax_kl(s, t, backend=backend).backward()
    assert t.grad is None and s.grad is not None
    with torch.no_grad():
        value = softmax_kl(s, t, backend=backend)
    assert not value.requires_grad
    assert abs(value.item() - softmax_kl_reference(s, t).item()) <= 1e-5 * value.item()


@pytest.mark.parametrize("backend", BACKENDS)
def test_second_backward_through_the_same_graph_raises(backend):
    """The gradient buffer is scaled in place (one N x V buffer in all), so a retained graph is single-use."""
    dev = _device(backend)
    s = _logits((3, 64), device=dev, seed=28).requires_grad_(True)
    t = _logits((3, 64), device=dev, seed=29)
    loss = softmax_kl(s, t, backend=backend) * 2.0
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="backward ran twice"):
        loss.backward()


def test_backward_hands_over_the_forward_buffer():
    """The student gradient is the very buffer written in forward (no copy, no second N x V allocation)."""
    s = _logits((4, 300), seed=47).requires_grad_(True)
    loss = softmax_kl(s, _logits((4, 300), seed=48), 2.0, backend="torch")
    buffer_ptr = loss.grad_fn.grad_buffer.data_ptr()
    loss.backward()
    assert s.grad.data_ptr() == buffer_ptr


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_and_mixed_dtype_inputs(backend):
    dev = _device(backend)
    base = _logits((2, 5, 400), device=dev, seed=30)
    s = base[:, :, :301]  # row stride 400
    t = _logits((2, 5, 301), torch.bfloat16, dev, seed=31)  # teacher in another dtype
    loss, grad, ref, ref_grad = _run(backend, s, t, 2.0)
    assert _rel(loss, ref) <= 1e-5 and _rel(grad, ref_grad) <= 1e-5
    st = _logits((301, 6), device=dev, seed=32).t()  # stride(-1) != 1
    tt = _logits((6, 301), device=dev, seed=33)
    loss, grad, ref, ref_grad = _run(backend, st, tt, 2.0)
    assert _rel(loss, ref) <= 1e-5 and _rel(grad, ref_grad) <= 1e-5


def test_module_wrapper():
    s = _logits((2, 4, 50), seed=34).requires_grad_(True)
    t = _logits((2, 4, 50), seed=35)
    mask = torch.tensor([[True, False, True, True], [False, True, True, True]])
    module = SoftmaxKLLoss(temperature=2.0, reduction="sum", t2_scale=False, backend="torch")
    assert "temperature=2.0" in repr(module)
    out = module(s, t, mask)
    torch.testing.assert_close(out, softmax_kl(s, t, 2.0, mask=mask, reduction="sum", t2_scale=False))
    ref = softmax_kl_reference(s, t, 2.0, mask=mask, reduction="sum", t2_scale=False)
    assert abs(out.item() - ref.item()) <= 1e-5 * ref.item()
    with pytest.raises(ValueError, match="temperature"):
        SoftmaxKLLoss(temperature=0.0)


def test_auto_backend_on_cpu_uses_torch_path(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the Triton path must not run for CPU tensors with backend='auto'")

    monkeypatch.setattr(skl, "_triton_rows", boom)
    s = _logits((2, 30), seed=36)
    assert torch.isfinite(softmax_kl(s, _logits((2, 30), seed=37)))


def test_triton_backend_errors_are_clear(monkeypatch):
    s, t = _logits((2, 30), seed=38), _logits((2, 30), seed=39)
    monkeypatch.setattr(skl, "triton_interpreted", lambda: False)
    if HAS_TRITON:
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            softmax_kl(s, t, backend="triton")
    monkeypatch.setattr(skl, "HAS_TRITON", False)
    with pytest.raises(ValueError, match="triton package"):
        softmax_kl(s, t, backend="triton")


def test_imports_and_runs_without_triton():
    """Triton is optional: with ``import triton`` failing, the package imports and the PyTorch path runs."""
    import subprocess
    import sys

    script = (
        "import sys; sys.modules['triton'] = None\n"  # a None entry makes `import triton` raise ImportError
        "import torch\n"
        "from distill.kernels import HAS_TRITON, softmax_kl, triton_interpreted\n"
        "from distill.kernels.softmax_kl import SoftmaxKLLoss\n"
        "assert not HAS_TRITON and not triton_interpreted()\n"
        "s = torch.randn(3, 17, requires_grad=True)\n"
        "softmax_kl(s, torch.randn(3, 17), 2.0).backward()\n"
        "assert torch.isfinite(s.grad).all() and SoftmaxKLLoss()(s, s.detach()).item() == 0.0\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_auto_chunk_rows_bounds_the_working_set():
    for vocab in (2, 1271, 30522, 128256, 262144, 10**8):
        rows = torch_kl._auto_chunk_rows(vocab)
        assert rows >= 1
        assert rows == 1 or rows * vocab * 4 <= 64 * 2**20


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"temperature": float("nan")}, "temperature"),
        ({"temperature": torch.tensor(2.0)}, "temperature"),
        ({"reduction": "mean"}, "reduction"),
        ({"backend": "cuda"}, "backend"),
        ({"mask": torch.ones(3, dtype=torch.bool)}, "mask"),
        ({"mask": torch.ones(2, 4)}, "mask"),
        ({"teacher_logits": torch.zeros(2, 4, 11)}, "same shape"),
        (
            {"student_logits": torch.zeros(8, 10), "teacher_logits": torch.zeros(8, 10).view(8, 1, 10, 1)},
            "same shape",
        ),
        ({"student_logits": torch.zeros(10), "teacher_logits": torch.zeros(10)}, r"\(N, V\)"),
        ({"student_logits": torch.zeros(2, 4, 10, dtype=torch.float64)}, "float32"),
        ({"student_logits": torch.zeros(2, 4, 10, dtype=torch.long)}, "float32"),
    ],
)
def test_bad_arguments(kwargs, match):
    args = {"student_logits": torch.zeros(2, 4, 10), "teacher_logits": torch.zeros(2, 4, 10)} | kwargs
    with pytest.raises(ValueError, match=match):
        softmax_kl(**args)


# --------------------------------------------------------------------------------------------------------------
# CUDA: the same comparisons with larger shapes, plus a memory check
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@requires_cuda
@requires_triton
@pytest.mark.parametrize("backend", ["triton", "torch"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("shape", [(64, 30522), (4, 32, 32000), (16, 128256), (4, 262144)])
@pytest.mark.parametrize("temperature", [1.0, 20.0, 100.0])
def test_cuda_matches_reference(backend, dtype, shape, temperature):
    t = _logits(shape, dtype, "cuda", seed=40)
    s = _logits(shape, dtype, "cuda", seed=41, like=t, noise=1.0)
    mask = (torch.rand(shape[:-1], generator=torch.Generator().manual_seed(42)) > 0.2).cuda()
    loss, grad, ref, ref_grad = _run(backend, s, t, temperature, mask=mask)
    assert _rel(loss, ref) <= _tol(dtype, temperature)
    assert _rel(grad, ref_grad) <= _tol(dtype, temperature)


@pytest.mark.gpu
@requires_cuda
@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(16, 128256), (4, 32, 32000)], ids=["16x128256", "4x32x32000"])
@pytest.mark.parametrize("temperature", [1.0, 20.0])
@pytest.mark.parametrize(
    "tune",
    [{"vec_stats": True}, {"block": 1024, "num_warps": 4}, {"block": 1024, "num_warps": 4, "vec_stats": True}],
    ids=["vec", "block1024", "block1024-vec"],
)
def test_cuda_kernel_variants(dtype, shape, temperature, tune):
    """The launch variants the benchmark sweeps compute the same function (masked rows included)."""
    t = _logits(shape, dtype, "cuda", seed=50)
    s = _logits(shape, dtype, "cuda", seed=51, like=t, noise=1.0)
    mask = (torch.rand(shape[:-1], generator=torch.Generator().manual_seed(52)) > 0.2).cuda()
    loss, grad, ref, ref_grad = _run("triton", s, t, temperature, mask=mask, _tune=tune)
    assert _rel(loss, ref) <= _tol(dtype, temperature)
    assert _rel(grad, ref_grad) <= _tol(dtype, temperature)


@pytest.mark.gpu
@requires_cuda
@requires_triton
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cuda_edge_cases(dtype):
    s = _logits((8, 50000), dtype, "cuda", seed=43, scale=2000.0).clamp(-1e4, 1e4)  # magnitudes up to 1e4
    t = _logits((8, 50000), dtype, "cuda", seed=44, scale=2000.0).clamp(-1e4, 1e4)
    t[0, :100] = float("-inf")
    s[1, 7:999] = float("-inf")
    t[1, 7:999] = float("-inf")
    t[2] = s[2]
    mask = torch.ones(8, dtype=torch.bool, device="cuda")
    mask[3] = False
    s[3] = float("nan")
    for temperature in (0.1, 1.0, 100.0):
        loss, grad, ref, ref_grad = _run(
            "triton", s, t, temperature, mask=mask, reduction="none", upstream=torch.rand(8) + 0.5
        )
        assert _rel(loss, ref) <= _tol(dtype, temperature)
        assert _rel(grad, ref_grad) <= _tol(dtype, temperature)
        assert loss[2].item() == 0 and loss[3].item() == 0 and (grad[3] == 0).all()
        assert (grad[1, 7:999] == 0).all()


@pytest.mark.gpu
@requires_cuda
@requires_triton
def test_cuda_memory_is_one_gradient_buffer():
    """Forward + backward allocate the bf16 gradient and O(N) scalars: no N x V float32 intermediate, and the
    backward scales the forward's buffer in place."""
    n, v = 256, 128256
    s = _logits((n, v), torch.bfloat16, "cuda", seed=45).requires_grad_(True)
    t = _logits((n, v), torch.bfloat16, "cuda", seed=46)
    grad_bytes = n * v * 2
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    loss = softmax_kl(s, t, 2.0)
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra <= grad_bytes + 4 * 2**20, f"forward used {extra} bytes, the gradient alone is {grad_bytes}"
    (loss * 0.5).backward()
    torch.cuda.synchronize()
    extra = torch.cuda.max_memory_allocated() - base
    assert extra <= grad_bytes + 4 * 2**20, (
        f"forward + backward used {extra} bytes, the gradient is {grad_bytes}"
    )
    assert s.grad.dtype == torch.bfloat16
