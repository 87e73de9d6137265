"""Accuracy of ``softmax_kl`` against a float64 reference, per backend / kernel variant, temperature and dtype.

    python scripts/accuracy_softmax_kl.py                  # CUDA if present, else CPU (Triton interpreted)
    python scripts/accuracy_softmax_kl.py --out-dir DIR    # -> DIR/softmax_kl_<device>_accuracy.{md,csv}

Two input families per temperature: independent ``N(0, 3^2)`` logits ("random") and nearly equal ones
(``s = 0.9 t + N(0, 0.5^2)``, "close": a small KL next to ``log V``, where float32 cancellation bites).
Errors are ``|x - ref| / |ref|`` (Frobenius) of the batchmean loss and of the student gradient.  Needs torch
(and triton for the kernel rows) only.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import sys
from pathlib import Path

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench_softmax_kl import slug  # noqa: E402  (the GPU-name slug of the benchmark's records)

from distill.kernels import HAS_TRITON, softmax_kl, softmax_kl_reference  # noqa: E402

VARIANTS = {  # name -> (backend, _tune)
    "torch": ("torch", None),
    "triton": ("triton", None),
    "triton-vec": ("triton", {"vec_stats": True}),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def inputs(case: str, shape: tuple[int, int], dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    t = torch.randn(shape, generator=gen) * 3.0  # (N, V)
    noise = torch.randn(shape, generator=gen)  # (N, V)
    s = t * 0.9 + noise * 0.5 if case == "close" else noise * 3.0  # (N, V)
    return s.to(device, dtype), t.to(device, dtype)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs" / "benchmarks")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[1.0, 4.0, 20.0, 100.0])
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    shape = (64, 32000) if cuda else (8, 4099)
    variants = [v for v in VARIANTS if HAS_TRITON or VARIANTS[v][0] == "torch"]
    rows = []
    for dtype_name, dtype in DTYPES.items():
        for temperature in args.temperatures:
            for case in ("random", "close"):
                s, t = inputs(case, shape, dtype, device)
                s64 = s.detach().double().requires_grad_(True)
                ref = softmax_kl_reference(s64, t.double(), temperature)
                (ref_grad,) = torch.autograd.grad(ref, s64)
                for name in variants:
                    backend, tune = VARIANTS[name]
                    s1 = s.detach().clone().requires_grad_(True)
                    loss = softmax_kl(s1, t, temperature, backend=backend, _tune=tune)
                    (grad,) = torch.autograd.grad(loss, s1)
                    row = {"dtype": dtype_name, "T": temperature, "case": case, "variant": name,
                           "loss": float(loss.detach()), "loss_rel_err": rel(loss, ref), "grad_rel_err": rel(grad, ref_grad)}
                    rows.append(row)
                    print(f"{dtype_name:>5} T={temperature:<6g} {case:>6} {name:>19}  loss {row['loss']:.6e}  "
                          f"loss err {row['loss_rel_err']:.2e}  grad err {row['grad_rel_err']:.2e}", flush=True)
    tag = slug(device)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with open(args.out_dir / f"softmax_kl_{tag}_accuracy.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    where = torch.cuda.get_device_name(0) if cuda else "CPU (Triton interpreter for the triton rows)"
    lines = [f"# softmax-KL accuracy against float64: {where}", "",
             f"- date: {datetime.date.today().isoformat()}; torch {torch.__version__}; shape {shape}",
             "- command: `python scripts/accuracy_softmax_kl.py`", "",
             "| dtype | T | inputs | variant | loss | loss rel. err | grad rel. err |", "|---|---:|---|---|---:|---:|---:|"]
    lines += [f"| {r['dtype']} | {r['T']:g} | {r['case']} | {r['variant']} | {r['loss']:.6e} | {r['loss_rel_err']:.2e} "
              f"| {r['grad_rel_err']:.2e} |" for r in rows]
    (args.out_dir / f"softmax_kl_{tag}_accuracy.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out_dir}/softmax_kl_{tag}_accuracy.md", flush=True)
    return rows


if __name__ == "__main__":
    main()
