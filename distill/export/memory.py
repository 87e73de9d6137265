"""Load time and peak memory of an artifact in its runtime, measured in a fresh subprocess.

``measure(runtime, path)`` starts ``python -m distill.export.memory``, which imports the runtime, builds a
batch-1 input, resets the process's resident-set high-water mark (``/proc/self/clear_refs``; where that is
not allowed, falls back to ``getrusage`` maxima), loads the artifact (timed: ``load_ms``) and runs it
``runs`` times. ``peak_memory_mb`` is the high-water mark of the resident set during load + runs minus the
resident set just before loading: native memory included (weights read or mapped, XNNPACK's packed weights,
activation arenas); the interpreter, torch, the runtime's import and one-time start are in the baseline. A fresh process keeps
earlier exports and caches out of the figure; tracemalloc would see none of the native allocations.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from distill.errors import ConfigError, DistillError


def _status_kb(key: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_high_water_mark() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := VmRSS
    except OSError:
        return False
    return True


def _inputs(names: Sequence[str], seq_len: int, dtype: Any) -> dict[str, Any]:
    import numpy as np

    ids = (np.arange(seq_len) % 40 + 5).reshape(1, seq_len)  # valid ids of any vocabulary > 45
    values = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)}
    return {n: values[n].astype(dtype) for n in names}


def _executorch(path: Path, names: Sequence[str], seq_len: int, threads: int) -> tuple[Callable, Callable]:
    # the runtime's own calls, as ExecuTorchClassifier makes them (importing distill.export.executorch would
    # pull in torch.export, transformers and the data code: seconds of CPU per measurement, in no figure)
    import numpy as np
    import torch
    from executorch.extension.pybindings import portable_lib
    from executorch.runtime import Runtime

    runtime = Runtime.get()  # the runtime's one-time start (kernel registry) belongs to the baseline
    portable_lib._unsafe_reset_threadpool(threads)
    feed = [torch.from_numpy(v) for v in _inputs(names, seq_len, np.int64).values()]
    load = lambda: runtime.load_program(path).load_method("forward")  # noqa: E731
    return load, lambda method: method.execute(feed)


def _litert(path: Path, names: Sequence[str], seq_len: int, threads: int) -> tuple[Callable, Callable]:
    # no torch here: LiteRT's interpreter needs numpy only (what an app ships), and torch's import is seconds
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    feed = _inputs(names, seq_len, np.int32)

    def load():  # as LiteRTClassifier loads it
        interpreter = Interpreter(model_path=str(path), num_threads=threads)
        return interpreter.get_signature_runner()

    return load, lambda runner: runner(**feed)


def _onnxruntime(path: Path, names: Sequence[str], seq_len: int, threads: int) -> tuple[Callable, Callable]:
    import numpy as np
    import onnxruntime as ort

    def load():
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(session):
        given = {i.name for i in session.get_inputs()}
        return session.run(None, {k: v for k, v in _inputs(names, seq_len, np.int64).items() if k in given})

    return load, run


RUNTIMES: dict[str, Callable] = {
    "executorch": _executorch,
    "ai_edge_litert": _litert,
    "onnxruntime": _onnxruntime,
}


def _measure_here(runtime: str, path: Path, names: Sequence[str], seq_len: int, threads: int, runs: int):
    load, run = RUNTIMES[runtime](path, names, seq_len, threads)
    exact = _reset_high_water_mark()
    before_kb = _status_kb("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    model = load()
    load_ms = (time.perf_counter() - start) * 1e3
    for _ in range(runs):
        run(model)
    peak_kb = _status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "runtime": runtime,
        "load_ms": load_ms,
        "peak_memory_mb": (peak_kb - before_kb) / 1024,
        "rss_before_load_mb": before_kb / 1024,
        "runs": runs,
        "seq_len": seq_len,
        "threads": threads,
        "method": "VmHWM after load + runs minus VmRSS before load (fresh process)"
        if exact
        else "ru_maxrss after load + runs minus ru_maxrss before load (fresh process)",
    }


def measure(
    runtime: str,
    path: str | Path,
    input_names: Sequence[str],
    seq_len: int = 128,
    threads: int = 1,
    runs: int = 3,
) -> dict[str, Any]:
    """``load_ms`` and ``peak_memory_mb`` (MiB) of ``path`` in ``runtime`` (a key of ``RUNTIMES``), batch 1 ×
    ``seq_len``, from a fresh subprocess with ``threads`` threads; see the module docstring."""
    if runtime not in RUNTIMES:
        raise ConfigError(
            f"memory measurement runtime {runtime!r} is unknown; allowed: {', '.join(RUNTIMES)}."
        )
    args = json.dumps([runtime, str(path), list(input_names), int(seq_len), int(threads), int(runs)])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    done = subprocess.run(
        [sys.executable, "-m", "distill.export.memory", args], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise DistillError(f"measuring {Path(path).name} in {runtime} failed: {tail}")
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    runtime, path, names, seq_len, threads, runs = json.loads(sys.argv[1])
    print(json.dumps(_measure_here(runtime, Path(path), names, seq_len, threads, runs)))
