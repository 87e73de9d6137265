#!/usr/bin/env python
"""Benchmark the fused softmax-KL loss against PyTorch eager, torch.compile and (if installed) Liger-Kernel.

All providers compute the same thing, ``KL(softmax(t / T) || softmax(s / T)) * T**2`` with ``batchmean``:

* ``eager``   -- ``F.kl_div(F.log_softmax(s / T), F.log_softmax(t / T), log_target=True) * T**2`` as usually
  written (no upcast: bf16 inputs run in bf16).
* ``compile`` -- ``torch.compile`` of the same function (``dynamic=False``; dynamo is reset per shape).
* ``ours``    -- ``distill.kernels.softmax_kl`` (Triton kernel on CUDA, chunked PyTorch path on CPU).
* ``liger``   -- ``LigerKLDIVLoss(log_target=True)`` on the two ``log_softmax`` outputs (optional import).
* ``ours@B``  -- ours with a forced Triton block size ``B`` (``--ours-blocks``, CUDA only), for tuning.

Modes: ``forward`` (training forward: the student requires grad), ``backward`` (backward only, after an
untimed forward) and ``full`` (forward + backward).

Reported per measurement: median milliseconds; "GB/s" = the *minimal* traffic of the mode divided by the time
(forward: read s and t; backward: write the gradient; full: both), the same byte count for every provider so
it is a normalised speed, also given as a percentage of the device's measured copy bandwidth (a large
``copy_``, read + write); and peak memory above the inputs:

* CUDA: ``torch.cuda.max_memory_allocated()`` minus the allocation before the measured call (inputs and the
  dynamo/compile state are already there).
* CPU: each (provider, shape, mode) gets a fresh subprocess for the memory measurement, with glibc's mmap
  threshold pinned (``MALLOC_MMAP_THRESHOLD_=131072``, so freed large blocks go back to the OS and RSS follows
  live memory): after the inputs are built and a small warm-up call, the kernel's peak-RSS counter is reset
  (``/proc/self/clear_refs`` = 5) and the peak is ``VmHWM - VmRSS(before)`` for the first full-size call.  This
  counts every byte the call touches (allocator slack, thread-pool buffers) and nothing from other processes.
  Timing runs in other subprocesses with the default allocator settings (the pinned threshold would charge
  page faults to every chunk-sized temporary), alternating providers for ``--cpu-rounds`` rounds and keeping
  the best per-round median, to damp the noise of other jobs on a shared machine.
* In ``backward`` mode the peak covers the whole call, including the untimed forward.

Results go to ``docs/benchmarks/softmax_kl_<device>.csv`` and ``.md`` (``--out-dir``, ``--tag``).

Examples::

    python scripts/bench_softmax_kl.py --device cpu --date 2026-11-27
    python scripts/bench_softmax_kl.py --device cuda --time-budget-s 300
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import itertools
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing the package
    sys.path.insert(0, str(REPO))

from distill.kernels import softmax_kl  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("forward", "backward", "full")
FIELDS = [
    "device",
    "threads",
    "rows",
    "vocab",
    "dtype",
    "mode",
    "provider",
    "status",
    "ms",
    "gbps",
    "pct_copy_bw",
    "peak_mb",
    "speedup_vs_eager",
    "peak_vs_eager",
]


# ------------------------------------------------------------------------------------------------------------
# Providers
# ------------------------------------------------------------------------------------------------------------
def eager_kl(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    """The usual PyTorch formulation; s, t: (N, V)."""
    log_q = F.log_softmax(s / temperature, dim=-1)  # (N, V)
    log_p = F.log_softmax(t / temperature, dim=-1)  # (N, V)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * (temperature * temperature)


def parse_variant(name: str) -> dict:
    """Kernel launch overrides of a provider ``ours@BLOCK[wWARPS][v]`` (``v``: per-lane pass-1 statistics)."""
    m = re.fullmatch(r"ours@(\d+)(?:w(\d+))?(v?)", name)
    if m is None or int(m[1]) & (int(m[1]) - 1) or (m[2] and int(m[2]) & (int(m[2]) - 1)):
        raise ValueError(f"bad kernel variant {name!r}: expected ours@BLOCK[wWARPS][v] with powers of two")
    tune = {"block": int(m[1]), "vec_stats": bool(m[3])}
    if m[2]:
        tune["num_warps"] = int(m[2])
    return tune


def make_provider(name: str):
    """A callable ``(s, t, T) -> loss`` for provider ``name`` (raises ImportError for a missing one)."""
    if name == "eager":
        return eager_kl
    if name == "compile":
        torch._dynamo.reset()  # fresh caches per shape: no recompile limit, no cross-shape dynamic fallback
        return torch.compile(eager_kl, dynamic=False)
    if name == "ours":
        return lambda s, t, temp: softmax_kl(s, t, temp)
    if name.startswith("ours@"):
        tune = parse_variant(name)
        return lambda s, t, temp: softmax_kl(s, t, temp, _tune=tune)
    if name == "liger":
        from liger_kernel.transformers import LigerKLDIVLoss  # optional dependency

        loss_mod = LigerKLDIVLoss(reduction="batchmean", log_target=True)

        def liger_kl(s, t, temp):
            log_q = F.log_softmax(s / temp, dim=-1)  # (N, V)
            log_p = F.log_softmax(t / temp, dim=-1)  # (N, V)
            return loss_mod(log_q, log_p) * (temp * temp)

        return liger_kl
    raise ValueError(f"unknown provider {name!r}")


def nominal_bytes(rows: int, vocab: int, dtype: torch.dtype, mode: str) -> int:
    elt = torch.empty((), dtype=dtype).element_size()
    per_mode = {"forward": 2, "backward": 1, "full": 3}[mode]  # read s, t / write grad / both
    return per_mode * rows * vocab * elt


# ------------------------------------------------------------------------------------------------------------
# Timing helpers
# ------------------------------------------------------------------------------------------------------------
class _Timer:
    def __init__(self, device: str):
        self.cuda = device == "cuda"

    def start(self):
        if self.cuda:
            self._a = torch.cuda.Event(enable_timing=True)
            self._b = torch.cuda.Event(enable_timing=True)
            self._a.record()
        else:
            self._t0 = time.perf_counter()

    def stop(self) -> float:
        """Milliseconds since start()."""
        if self.cuda:
            self._b.record()
            self._b.synchronize()
            return self._a.elapsed_time(self._b)
        return (time.perf_counter() - self._t0) * 1e3


def run_once(fn, s: torch.Tensor, t: torch.Tensor, temperature: float, mode: str, timer: _Timer) -> float:
    """One call in ``mode``; returns the milliseconds of the timed part.  Leaves ``s.grad`` as None."""
    s.grad = None
    if mode == "backward":
        loss = fn(s, t, temperature)
        timer.start()
        loss.backward()
        ms = timer.stop()
    else:
        timer.start()
        loss = fn(s, t, temperature)
        if mode == "full":
            loss.backward()
        ms = timer.stop()
    del loss
    s.grad = None
    return ms


def time_mode(fn, s, t, temperature, mode, device, min_reps=3, max_reps=20, target_ms=400.0) -> float:
    timer = _Timer(device)
    first = run_once(fn, s, t, temperature, mode, timer)
    reps = int(max(min_reps, min(max_reps, target_ms / max(first, 1e-3))))
    return statistics.median(run_once(fn, s, t, temperature, mode, timer) for _ in range(reps))


def make_inputs(rows: int, vocab: int, dtype: torch.dtype, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(0)
    s = torch.randn(rows, vocab, device=device, dtype=dtype, generator=gen).mul_(3.0)  # (N, V) student
    t = torch.randn(rows, vocab, device=device, dtype=dtype, generator=gen).mul_(3.0)  # (N, V) teacher
    return s.requires_grad_(True), t


def copy_bandwidth_gbps(device: str) -> float:
    """Measured copy bandwidth, counting read + write bytes, of a 1 GiB (CUDA) / 256 MiB (CPU) tensor."""
    n = (2**30 if device == "cuda" else 2**28) // 4
    x = torch.empty(n, dtype=torch.float32, device=device).fill_(1.0)
    y = torch.empty_like(x)
    timer = _Timer(device)
    times = []
    for _ in range(8):
        timer.start()
        y.copy_(x)
        times.append(timer.stop())
    ms = statistics.median(times[2:])
    del x, y
    return 2 * n * 4 / (ms * 1e-3) / 1e9


# ------------------------------------------------------------------------------------------------------------
# CUDA: in-process measurements
# ------------------------------------------------------------------------------------------------------------
def bench_cuda(args, copy_bw: float, out, notes: list[str]) -> None:
    start = time.time()
    configs = [(d, v, r) for d in args.dtypes for v in args.vocab for r in args.rows]
    for dtype_name, vocab, rows in configs:
        dtype = DTYPES[dtype_name]
        gc.collect()
        torch.cuda.empty_cache()
        s, t = make_inputs(rows, vocab, dtype, "cuda")
        largest = rows == max(args.rows) and vocab == max(args.vocab)
        providers = sorted(args.providers, key=lambda p: p == "compile")  # compile last (slowest to set up)
        if largest or args.sweep_all:  # block-size sweep: largest shape per dtype, full mode only
            providers += [f"ours@{b}" for b in args.ours_blocks]
        for provider in providers:
            try:
                fn = make_provider(provider)
            except ImportError as exc:
                note = f"{provider}: not run ({exc})"
                if note not in notes:
                    notes.append(note)
                    print(note, flush=True)
                continue
            for mode in args.modes if not provider.startswith("ours@") else ["full"]:
                row = dict(
                    device="cuda", rows=rows, vocab=vocab, dtype=dtype_name, mode=mode, provider=provider
                )
                # torch.compile spends most of its time compiling: it gets the first 60% of the budget only,
                # so the other providers still cover every shape.
                budget = args.time_budget_s * (0.6 if provider == "compile" else 1.0)
                if time.time() - start > budget:
                    out(dict(row, status="skipped (time budget)"))
                    continue
                try:
                    run_once(fn, s, t, args.temperature, mode, _Timer("cuda"))  # warm-up / compile
                    gc.collect()
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    base = torch.cuda.memory_allocated()
                    run_once(fn, s, t, args.temperature, mode, _Timer("cuda"))
                    torch.cuda.synchronize()
                    peak = torch.cuda.max_memory_allocated() - base
                    ms = time_mode(fn, s, t, args.temperature, mode, "cuda")
                    out(dict(row, status="ok", ms=ms, peak_mb=peak / 2**20), copy_bw)
                except torch.cuda.OutOfMemoryError:
                    out(dict(row, status="OOM"))
                except Exception as exc:  # a provider failing must not stop the sweep
                    out(dict(row, status=f"error: {type(exc).__name__}: {str(exc)[:120]}"))
                finally:
                    s.grad = None
                    gc.collect()
                    torch.cuda.empty_cache()
        del s, t


# ------------------------------------------------------------------------------------------------------------
# CPU: one subprocess per measurement
# ------------------------------------------------------------------------------------------------------------
def _proc_status_kb(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def cpu_worker(spec: dict) -> dict:
    """Runs in a fresh process.  kind "mem": peak-RSS delta of the first full-size call; "time": median ms."""
    torch.manual_seed(0)
    torch.set_num_threads(spec["threads"])
    dtype = DTYPES[spec["dtype"]]
    fn = make_provider(spec["provider"])
    s, t = make_inputs(spec["rows"], spec["vocab"], dtype, "cpu")
    if spec["kind"] == "time":
        return {"ms": time_mode(fn, s, t, spec["temperature"], spec["mode"], "cpu", 3, 7, 3000.0)}
    # Warm-up on 2 rows: thread pools, dispatcher and lazy inits, without full-size allocations.
    small_s = s[:2].detach().clone().requires_grad_(True)
    run_once(fn, small_s, t[:2].clone(), spec["temperature"], "full", _Timer("cpu"))
    del small_s
    gc.collect()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset VmHWM (peak RSS) to the current RSS
    base_kb = _proc_status_kb("VmRSS")
    run_once(fn, s, t, spec["temperature"], spec["mode"], _Timer("cpu"))
    return {"peak_mb": (_proc_status_kb("VmHWM") - base_kb) / 1024}


def _run_worker(spec: dict, env: dict) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
        raise RuntimeError(tail[0][:160])
    return json.loads(lines[-1][len("RESULT ") :])


def bench_cpu(args, copy_bw: float, out, notes: list[str]) -> None:
    """Per shape and mode: one memory worker per provider, then timing workers alternating between providers
    for ``--cpu-rounds`` rounds; the best (lowest) of the per-round medians is reported, which damps the effect
    of other jobs sharing the machine."""
    mem_env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    notes.append(
        f"CPU timing: median of 3-7 calls per worker process, best of {args.cpu_rounds} rounds alternating "
        "providers; memory: separate process per provider with MALLOC_MMAP_THRESHOLD_=131072, peak RSS "
        "(VmHWM after reset via /proc/self/clear_refs) minus RSS before the call; backward-mode peaks include "
        "the (untimed) forward"
    )
    configs = [
        (th, d, v, r) for th in args.threads for d in args.dtypes for v in args.vocab for r in args.rows
    ]
    for (threads, dtype_name, vocab, rows), mode in itertools.product(configs, args.modes):
        base = dict(device="cpu", threads=threads, rows=rows, vocab=vocab, dtype=dtype_name, mode=mode)
        spec = dict(base, temperature=args.temperature)
        results: dict[str, dict] = {p: {"ms": []} for p in args.providers}
        try:
            for provider in args.providers:
                mem = _run_worker(dict(spec, provider=provider, kind="mem"), mem_env)
                results[provider]["peak_mb"] = mem["peak_mb"]
            for _ in range(args.cpu_rounds):
                for provider in args.providers:
                    res = _run_worker(dict(spec, provider=provider, kind="time"), dict(os.environ))
                    results[provider]["ms"].append(res["ms"])
        except RuntimeError as exc:
            for provider in args.providers:
                out(dict(base, provider=provider, status=f"error: {exc}"))
            continue
        for provider in args.providers:
            r = results[provider]
            out(dict(base, provider=provider, status="ok", ms=min(r["ms"]), peak_mb=r["peak_mb"]), copy_bw)


# ------------------------------------------------------------------------------------------------------------
# Reporting
# ------------------------------------------------------------------------------------------------------------
def device_description(device: str) -> str:
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs)"
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        model = platform.processor() or model
    return f"{model}, {os.cpu_count()} logical CPUs visible, torch threads = {torch.get_num_threads()}"


def slug(device: str) -> str:
    if device == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-")


def _fmt(value, spec: str) -> str:
    return "" if value in (None, "") else format(value, spec)


def finalize(rows: list[dict]) -> None:
    """Fill the eager-relative columns."""

    def key(r):
        return (r.get("threads"), r["rows"], r["vocab"], r["dtype"], r["mode"])

    eager = {key(r): r for r in rows if r["provider"] == "eager"}
    for r in rows:
        ref = eager.get(key(r))
        if r.get("status") == "ok" and ref is not None and ref.get("status") == "ok":
            r["speedup_vs_eager"] = ref["ms"] / r["ms"]
            r["peak_vs_eager"] = r["peak_mb"] / ref["peak_mb"] if ref["peak_mb"] > 0 else None


def write_outputs(rows: list[dict], args, meta: dict, out_dir: Path, tag: str) -> tuple[Path, Path]:
    finalize(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"softmax_kl_{tag}.csv"
    md_path = out_dir / f"softmax_kl_{tag}.md"
    with open(csv_path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in FIELDS})
    lines = [
        f"# softmax-KL benchmark: {meta['device_desc']}",
        "",
        f"- date: {meta['date']}",
        f"- command: `{meta['command']}`",
        f"- torch {torch.__version__}, triton {meta['triton']}, python {platform.python_version()}",
        f"- measured copy bandwidth (read + write): {meta['copy_bw']:.1f} GB/s",
        f"- temperature {args.temperature}, reduction batchmean, inputs ~ N(0, 3^2)",
        "- GB/s = minimal traffic of the mode (forward: read s, t; backward: write grad; full: both) / time; "
        "peak = memory above the inputs (see the script docstring for how it is measured on this device).",
        *[f"- note: {n}" for n in meta["notes"]],
        "",
        "| threads | rows | V | dtype | mode | provider | ms | GB/s | % copy BW | peak MB | speedup vs eager "
        "| peak / eager |",
        "|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(
                f"| {r.get('threads', '')} | {r['rows']} | {r['vocab']} | {r['dtype']} | {r['mode']} | {r['provider']} "
                f"| {r['status']} "
                "| | | | | |"
            )
            continue
        lines.append(
            f"| {r.get('threads', '')} | {r['rows']} | {r['vocab']} | {r['dtype']} | {r['mode']} | {r['provider']} "
            f"| {_fmt(r['ms'], '.2f')} "
            f"| {_fmt(r.get('gbps'), '.1f')} | {_fmt(r.get('pct_copy_bw'), '.0f')} | {_fmt(r['peak_mb'], '.0f')} "
            f"| {_fmt(r.get('speedup_vs_eager'), '.2f')} | {_fmt(r.get('peak_vs_eager'), '.3f')} |"
        )
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--rows", type=int, nargs="+", help="default: cuda 4096 16384; cpu 1024 4096")
    parser.add_argument("--vocab", type=int, nargs="+", help="default: cuda 30522 128256; cpu 30522")
    parser.add_argument(
        "--dtypes", nargs="+", choices=sorted(DTYPES), help="default: cuda bf16 fp32; cpu fp32"
    )
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument(
        "--providers", nargs="+", help="default: cuda eager compile ours liger; cpu eager ours"
    )
    parser.add_argument(
        "--ours-blocks", nargs="*", default=[],
        help="extra ours@BLOCK[wWARPS][v] providers (CUDA), e.g. 4096 2048w8v (v: per-lane pass-1 statistics)"
    )
    parser.add_argument(
        "--sweep-all", action="store_true", help="--ours-blocks on every shape, not only the largest"
    )
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument(
        "--time-budget-s", type=float, default=float("inf"), help="CUDA: skip what is left after"
    )
    parser.add_argument("--out-dir", type=Path, default=REPO / "docs" / "benchmarks")
    parser.add_argument("--tag", help="file name part: softmax_kl_<tag>.md (default: cpu or the GPU name)")
    parser.add_argument("--cpu-rounds", type=int, default=2, help="CPU: timing rounds alternating providers")
    parser.add_argument(
        "--threads", type=int, nargs="+", help="CPU: torch threads per run (default: 1 and all)"
    )
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        print("RESULT " + json.dumps(cpu_worker(json.loads(args.worker))), flush=True)
        return

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda needs a CUDA device")
    args.rows = args.rows or ([4096, 16384] if cuda else [1024, 4096])
    args.vocab = args.vocab or ([30522, 128256] if cuda else [30522])
    args.dtypes = args.dtypes or (["bf16", "fp32"] if cuda else ["fp32"])
    args.threads = args.threads or sorted({1, torch.get_num_threads()})
    args.providers = args.providers or (["eager", "compile", "ours", "liger"] if cuda else ["eager", "ours"])

    try:
        import triton

        triton_version = triton.__version__
    except Exception:
        triton_version = "not installed"
    copy_bw = copy_bandwidth_gbps(args.device)
    meta = {
        "device_desc": device_description(args.device),
        "date": args.date,
        "command": "python scripts/bench_softmax_kl.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "triton": triton_version,
        "copy_bw": copy_bw,
        "notes": [],
    }
    tag = args.tag or slug(args.device)
    print(f"{meta['device_desc']}; copy bandwidth {copy_bw:.1f} GB/s", flush=True)
    header = f"{'thr':>3} {'rows':>6} {'V':>7} {'dtype':>5} {'mode':>8} {'provider':>12} {'ms':>9} {'GB/s':>7} {'%bw':>4} {'peakMB':>8}"
    print(header, flush=True)
    results: list[dict] = []

    def out(row: dict, bandwidth: float | None = None) -> None:
        if row.get("status") == "ok":
            gbps = (
                nominal_bytes(row["rows"], row["vocab"], DTYPES[row["dtype"]], row["mode"])
                / (row["ms"] * 1e-3)
                / 1e9
            )
            row["gbps"] = gbps
            row["pct_copy_bw"] = 100 * gbps / bandwidth
            print(
                f"{row.get('threads', ''):>3} {row['rows']:>6} {row['vocab']:>7} {row['dtype']:>5} {row['mode']:>8} "
                f"{row['provider']:>12} "
                f"{row['ms']:>9.2f} {gbps:>7.1f} {row['pct_copy_bw']:>4.0f} {row['peak_mb']:>8.0f}",
                flush=True,
            )
        else:
            print(
                f"{row.get('threads', ''):>3} {row['rows']:>6} {row['vocab']:>7} {row['dtype']:>5} {row['mode']:>8} "
                f"{row['provider']:>12} "
                f"{row['status']}",
                flush=True,
            )
        results.append(row)
        write_outputs(
            results, args, meta, args.out_dir, tag
        )  # rewritten each time: partial runs keep results

    (bench_cuda if cuda else bench_cpu)(args, copy_bw, out, meta["notes"])
    csv_path, md_path = write_outputs(results, args, meta, args.out_dir, tag)
    print(f"wrote {csv_path} and {md_path}", flush=True)


if __name__ == "__main__":
    main()
