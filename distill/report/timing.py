"""Size on disk, and CPU latency / throughput of any model the report takes (torch or a runtime session)."""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".onnx", ".data"}


def size_on_disk_mb(path: str | Path) -> float:
    """Total size in MB (10⁶ bytes) of a file or of the weight files of a saved-model folder.

    Tokenizer and config files are not counted: they are the same for teacher and student.
    """
    path = Path(path)
    if path.is_file():
        return path.stat().st_size / 1e6
    weights = [p for p in path.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    return sum(p.stat().st_size for p in weights) / 1e6


def synthetic_inputs(vocab_size: int, batch_size: int, seq_len: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token ids (B, T) int64 with a full attention mask: a fixed-shape input for timing."""
    g = torch.Generator().manual_seed(seed)
    low = 1000 if vocab_size > 2000 else vocab_size // 2  # skip BERT's [unused]/special ids when there are many
    ids = torch.randint(low, vocab_size, (batch_size, seq_len), generator=g)  # (B, T)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


@torch.inference_mode()
def time_forward(model: nn.Module | Any, inputs: dict[str, torch.Tensor], runs: int, warmup: int = 5) -> list[float]:
    """Wall-clock seconds of ``runs`` forward passes after ``warmup`` untimed ones."""
    if isinstance(model, nn.Module):
        model.eval()
    for _ in range(warmup):
        model(**inputs)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        model(**inputs)
        times.append(time.perf_counter() - t0)
    return times


def _quantile(values: list[float], q: float) -> float:
    """Linear-interpolated quantile ``q`` in [0, 1] (``statistics.quantiles`` needs two or more values)."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def measure_speed(
    model: nn.Module | Any,
    vocab_size: int,
    seq_len: int = 128,
    latency_runs: int = 50,
    throughput_batch: int = 32,
    throughput_runs: int = 5,
    warmup: int = 5,
) -> dict[str, float]:
    """CPU latency at batch 1 (``latency_ms``: median, ``latency_p90_ms``: 90th percentile, ms per example
    over ``latency_runs`` runs after ``warmup``), throughput (examples/s at ``throughput_batch``, median of
    ``throughput_runs``) and the thread count (an ``OnnxClassifier`` states its own ``threads``)."""
    single = time_forward(model, synthetic_inputs(vocab_size, 1, seq_len), latency_runs, warmup=warmup)
    batched = time_forward(model, synthetic_inputs(vocab_size, throughput_batch, seq_len), throughput_runs, warmup=1)
    return {
        "latency_ms": 1e3 * statistics.median(single),
        "latency_p90_ms": 1e3 * _quantile(single, 0.9),
        "throughput_eps": throughput_batch / statistics.median(batched),
        "threads": getattr(model, "threads", None) or torch.get_num_threads(),
    }
