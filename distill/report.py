"""Measurements for the compression report: parameters, size on disk, CPU latency and throughput."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.models.student import count_parameters


def size_on_disk_mb(path: str | Path) -> float:
    """Total size in MB (10⁶ bytes) of a file or of the weight files of a saved-model folder.

    Tokenizer and config files are not counted: they are the same for teacher and student.
    """
    path = Path(path)
    if path.is_file():
        return path.stat().st_size / 1e6
    weights = [p for p in path.rglob("*") if p.is_file() and p.suffix in {".safetensors", ".bin", ".pt", ".pth", ".onnx", ".data"}]
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


def measure_speed(
    model: nn.Module | Any,
    vocab_size: int,
    seq_len: int = 128,
    latency_runs: int = 50,
    throughput_batch: int = 32,
    throughput_runs: int = 5,
    warmup: int = 5,
) -> dict[str, float]:
    """CPU latency (median ms per example at batch 1, over ``latency_runs`` runs after ``warmup``) and
    throughput (examples/s at ``throughput_batch``) of a torch model or an ``OnnxClassifier``, with the
    settings and the thread count (an ``OnnxClassifier`` states its own ``threads``)."""
    single = time_forward(model, synthetic_inputs(vocab_size, 1, seq_len), latency_runs, warmup=warmup)
    batched = time_forward(model, synthetic_inputs(vocab_size, throughput_batch, seq_len), throughput_runs, warmup=1)
    return {
        "latency_ms": 1e3 * statistics.median(single),
        "latency_runs": latency_runs,
        "throughput_eps": throughput_batch / statistics.median(batched),
        "throughput_batch": throughput_batch,
        "seq_len": seq_len,
        "threads": getattr(model, "threads", None) or torch.get_num_threads(),
    }


def model_entry(name: str, model: nn.Module, saved_dir: str | Path, metrics: dict[str, float], main_metric: str,
                speed: dict[str, float] | None) -> dict[str, Any]:
    """One row of the report: metric(s), parameter count, size on disk, speed."""
    row: dict[str, Any] = {"model": name, "metric": main_metric, "score": metrics.get(main_metric)}
    row["metrics"] = dict(metrics)
    row["parameters"] = count_parameters(model)
    row["size_mb"] = size_on_disk_mb(saved_dir)
    row["path"] = str(saved_dir)
    if speed:
        row.update(speed)
    return row


def with_ratios(rows: list[dict[str, Any]], reference: str = "teacher") -> list[dict[str, Any]]:
    """Add each row's retention (score ÷ reference score) and size/parameter/speed ratios to the reference."""
    ref = next((r for r in rows if r["model"] == reference), None)
    if ref is None:
        return rows
    for row in rows:
        if ref.get("score") not in (None, 0) and row.get("score") is not None:
            row["retention"] = row["score"] / ref["score"]
        for key, ratio in (("parameters", "compression_params"), ("size_mb", "compression_size")):
            if row.get(key):
                row[ratio] = ref[key] / row[key]
        if row.get("latency_ms") and ref.get("latency_ms"):
            row["speedup_latency"] = ref["latency_ms"] / row["latency_ms"]
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the report rows (what the run prints)."""
    cols = [("model", "model", "{}"), ("metric", "metric", "{}"), ("score", "score", "{:.4f}"),
            ("retention", "retention", "{:.1%}"), ("parameters", "params", "{:,}"), ("size_mb", "size MB", "{:.1f}"),
            ("latency_ms", "ms/ex @b1", "{:.2f}"), ("throughput_eps", "ex/s @b32", "{:.1f}"),
            ("speedup_latency", "speed-up", "{:.1f}x")]
    header = [c[1] for c in cols]
    body = []
    for row in rows:
        body.append([fmt.format(row[key]) if row.get(key) is not None else "-" for key, _, fmt in cols])
    widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths))  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *(line(r) for r in body)])


def write_report(path: str | Path, rows: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write ``report.json`` (atomically) and return its content."""
    path = Path(path)
    report = {"models": rows, **(extra or {})}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, default=str))
    tmp.replace(path)
    return report
