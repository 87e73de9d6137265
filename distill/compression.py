"""Compression report: teacher vs student fp32 vs student int8 (QAT, PTQ) vs ONNX int8.

Each row holds the dev metric, parameter count, size on disk, CPU latency (median ms at batch 1 over
``latency_runs`` timed runs after warm-up, sequence length ``seq_len``), throughput (examples/s at batch
``throughput_batch``) and every ratio to the teacher (:func:`distill.report.with_ratios`). Written to the
run folder as ``compression.json``, ``compression.md`` and ``compression.png`` (metric vs latency, bubble
area proportional to size on disk).

The one-call entry point for the training pipeline is :func:`build_compression_report`; the lower-level
:func:`compression_report` takes ready-made :class:`Candidate` rows.
"""

from __future__ import annotations

import copy
import platform
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill import report as timing
from distill.data.tasks import TaskSpec
from distill.metrics import build_metrics, predictions
from distill.report import model_entry, with_ratios, write_report

LABEL_KEYS = ("labels", "label")


@torch.inference_mode()
def evaluate_classifier(model_callable: Any, dataloader: Iterable[Mapping[str, Any]], task_spec: TaskSpec) -> dict[str, float]:
    """Score a classifier on ``dataloader`` with the task's GLUE metrics (``{"accuracy": ..., ...}``).

    ``model_callable`` is a torch HF model (fp32 or int8) or an ``OnnxClassifier``: anything that takes
    ``input_ids``/``attention_mask``[/``token_type_ids``] keywords and returns logits (B, C) or an output
    with ``.logits``. Batches are dicts with ``labels`` (B,) as the GLUE datamodule yields.
    """
    from distill.export.onnx import logits_of

    if isinstance(model_callable, nn.Module):
        model_callable.eval()
    metrics = build_metrics(task_spec)
    seen = 0
    for batch in dataloader:
        labels = next(batch[k] for k in LABEL_KEYS if k in batch)
        logits = logits_of(model_callable, batch)
        metrics.update(predictions(logits, task_spec.is_regression), torch.as_tensor(labels))
        seen += len(labels)
    if not seen:
        return {}
    return {name: float(value) for name, value in metrics.compute().items()}


@dataclass
class Candidate:
    """One model to report: a torch module or an ``OnnxClassifier``, and where its weights lie on disk.

    ``metrics`` skips evaluation when given; ``param_model`` counts parameters for models that are not
    ``nn.Module``s (the fp32 student for ONNX rows).
    """

    name: str
    model: Any
    path: str | Path
    metrics: dict[str, float] | None = None
    param_model: nn.Module | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def compression_report(
    run_dir: str | Path,
    candidates: list[Candidate],
    task: TaskSpec | None = None,
    dataloader: Iterable[Mapping[str, Any]] | None = None,
    *,
    vocab_size: int,
    seq_len: int = 128,
    latency_runs: int = 50,
    throughput_batch: int = 32,
    throughput_runs: int = 5,
    measure_speed: bool = True,
    reference: str = "teacher",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate and time each candidate, add ratios to ``reference`` and write compression.{json,md,png}."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    main_metric = task.main_metric if task is not None else "score"
    rows = []
    for cand in candidates:
        metrics = cand.metrics
        if metrics is None:
            metrics = evaluate_classifier(cand.model, dataloader, task) if dataloader is not None and task else {}
        speed = None
        if measure_speed:
            speed = timing.measure_speed(cand.model, vocab_size, seq_len, latency_runs, throughput_batch, throughput_runs)
        counted = cand.model if isinstance(cand.model, nn.Module) else cand.param_model
        row = model_entry(cand.name, counted if counted is not None else nn.Module(), cand.path, metrics,
                          main_metric, speed)
        if counted is None:
            row["parameters"] = None
        row.update(cand.notes)
        rows.append(row)
    rows = with_ratios(rows, reference)
    settings = {
        "seq_len": seq_len, "latency_runs": latency_runs, "throughput_batch": throughput_batch,
        "throughput_runs": throughput_runs, "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "measure_speed": measure_speed, "reference": reference,
    }
    report = write_report(run_dir / "compression.json", rows, {"settings": settings, **(extra or {})})
    (run_dir / "compression.md").write_text(to_markdown(rows, settings, extra))
    plot_compression(rows, run_dir / "compression.png", main_metric)
    return report


def _fmt(value: Any, spec: str) -> str:
    return "–" if value is None else spec.format(value)


def to_markdown(rows: list[dict[str, Any]], settings: dict[str, Any], extra: dict[str, Any] | None = None) -> str:
    """A markdown table of the report rows with the measurement settings stated above it."""
    cols = [("model", "model", "{}"), ("score", "metric", "{:.4f}"), ("retention", "retention", "{:.1%}"),
            ("parameters", "params", "{:,}"), ("compression_params", "params ÷", "{:.1f}x"),
            ("size_mb", "size MB", "{:.2f}"), ("compression_size", "size ÷", "{:.1f}x"),
            ("latency_ms", "ms @b1", "{:.2f}"), ("speedup_latency", "speed-up", "{:.1f}x"),
            ("throughput_eps", f"ex/s @b{settings['throughput_batch']}", "{:.1f}")]
    metric = rows[0].get("metric", "score") if rows else "score"
    lines = [
        "# Compression report", "",
        f"Metric: dev `{metric}`. CPU ({settings['cpu']}), {settings['torch_threads']} threads; latency is the "
        f"median of {settings['latency_runs']} runs after warm-up at batch 1 and sequence length "
        f"{settings['seq_len']}; throughput at batch {settings['throughput_batch']}. Ratios (÷, speed-up) are "
        f"{settings['reference']} ÷ model; retention is model ÷ {settings['reference']} score.", "",
        "| " + " | ".join(c[1] for c in cols) + " |",
        "|" + "|".join("---" for _ in cols) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(key), spec) for key, _, spec in cols) + " |")
    parity = (extra or {}).get("onnx_parity")
    if parity:
        lines += ["", "ONNX parity vs PyTorch: " + "; ".join(
            f"{k}: max |Δlogit| {v['max_abs_diff']:.2e}, agreement {v['agreement']:.2%}" for k, v in parity.items())]
    return "\n".join(lines) + "\n"


def plot_compression(rows: list[dict[str, Any]], path: str | Path, metric: str = "score") -> Path:
    """Metric vs latency, one labelled bubble per model, area proportional to size on disk."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8), dpi=120)
    sizes = [r.get("size_mb") or 0.0 for r in rows]
    biggest = max(sizes) or 1.0
    placed = [(row, size) for row, size in zip(rows, sizes, strict=True) if row.get("latency_ms") is not None]
    for i, (row, size) in enumerate(sorted(placed, key=lambda p: p[0]["latency_ms"])):
        x, y = row["latency_ms"], row.get("score") if row.get("score") is not None else 0.0
        ax.scatter([x], [y], s=40 + 2000 * size / biggest, alpha=0.45, edgecolors="k")
        # neighbours in latency get labels above / below in turn, so close points stay readable
        ax.annotate(f"{row['model']}\n{size:.1f} MB", (x, y), textcoords="offset points",
                    xytext=(6, 10 if i % 2 == 0 else -26), fontsize=8)
    latencies = [row["latency_ms"] for row, _ in placed if row["latency_ms"] > 0]
    if latencies and max(latencies) / min(latencies) > 8:  # int8 students and the teacher differ by 10-30x
        ax.set_xscale("log")
    ax.margins(x=0.15, y=0.2)
    log_x = ax.get_xscale() == "log"
    ax.set_xlabel("CPU latency, ms per example (batch 1" + (", log scale)" if log_x else ")"))
    ax.set_ylabel(f"dev {metric}")
    ax.set_title("Metric vs latency (bubble area ∝ size on disk)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _saved_size_dir(model: nn.Module, where: Path) -> Path:
    model.save_pretrained(where)
    return where


def build_compression_report(
    run_dir: str | Path,
    teacher: nn.Module,
    student: nn.Module,
    task: TaskSpec,
    dataloader: Iterable[Mapping[str, Any]] | None,
    *,
    teacher_dir: str | Path | None = None,
    student_dir: str | Path | None = None,
    qat_int8: nn.Module | None = None,
    ptq_int8: nn.Module | None = None,
    embeddings: bool = False,
    onnx: bool = True,
    tokenizer: Any = None,
    seq_len: int = 128,
    latency_runs: int = 50,
    throughput_batch: int = 32,
    throughput_runs: int = 5,
    measure_speed: bool = True,
    metrics: Mapping[str, dict[str, float]] | None = None,
) -> dict[str, Any]:
    """Build every artefact under ``run_dir/compression/`` and write the compression report in ``run_dir``.

    Rows: ``teacher``, ``student_fp32``, ``student_int8_qat`` (when ``qat_int8`` is given, e.g.
    ``convert_qat(module.student)``), ``student_int8_ptq`` (``ptq_int8`` or PTQ of ``student``) and
    ``student_onnx_int8`` (ONNX export of ``student`` + onnxruntime dynamic int8), unless ``onnx=False``.
    ``teacher_dir`` / ``student_dir`` are their saved folders (saved here when missing, for the size column).
    ``metrics`` maps row names to precomputed dev metrics (skips their evaluation). ``embeddings`` also
    quantizes the embedding tables (PTQ and ONNX int8).
    """
    from distill.quant import is_qat_prepared, ptq_dynamic_int8, save_int8, strip_fake_quant

    run_dir = Path(run_dir)
    art = run_dir / "compression"
    art.mkdir(parents=True, exist_ok=True)
    metrics = dict(metrics or {})
    if is_qat_prepared(student):  # a QAT-trained student reports as its plain fp32 weights
        student = strip_fake_quant(copy.deepcopy(student))
    student = student.eval()
    teacher = teacher.eval()
    with tempfile.TemporaryDirectory() as tmp:
        tdir = Path(teacher_dir) if teacher_dir else _saved_size_dir(teacher, Path(tmp) / "teacher")
        sdir = Path(student_dir) if student_dir else _saved_size_dir(student, art / "student-fp32")
        cands = [Candidate("teacher", teacher, tdir, metrics.get("teacher")),
                 Candidate("student_fp32", student, sdir, metrics.get("student_fp32"))]
        if qat_int8 is not None:
            path = save_int8(qat_int8, art / "student-int8-qat", tokenizer, extra={"source": "qat"})
            cands.append(Candidate("student_int8_qat", qat_int8, path, metrics.get("student_int8_qat")))
        if ptq_int8 is None:
            ptq_int8 = ptq_dynamic_int8(student, embeddings=embeddings)
        path = save_int8(ptq_int8, art / "student-int8-ptq", tokenizer, extra={"source": "ptq"})
        cands.append(Candidate("student_int8_ptq", ptq_int8, path, metrics.get("student_int8_ptq")))
        extra: dict[str, Any] = {}
        if onnx:
            from distill.export.onnx import OnnxClassifier, export_onnx_with_int8

            batches = list(dataloader) if dataloader is not None else None
            _, int8_path, extra["onnx_parity"] = export_onnx_with_int8(student, art / "onnx", embeddings, batches)
            session = OnnxClassifier(int8_path)
            dataloader = batches
            cands.append(Candidate("student_onnx_int8", session, int8_path, metrics.get("student_onnx_int8"),
                                   param_model=student, notes={"runtime": "onnxruntime"}))
        return compression_report(
            run_dir, cands, task, dataloader, vocab_size=student.config.vocab_size, seq_len=seq_len,
            latency_runs=latency_runs, throughput_batch=throughput_batch, throughput_runs=throughput_runs,
            measure_speed=measure_speed, extra=extra,
        )


def int8_size_estimate(config: Any, embeddings: bool = False) -> dict[str, float]:
    """Analytic size on disk (MB) of a BERT classifier in fp32 and torchao int8, and their ratio.

    int8 layers store 1 byte per weight plus one fp32 scale per output row; biases, LayerNorms (and the
    embeddings unless ``embeddings``) stay fp32. Serialization overhead (a few KB) is ignored.
    """
    h, ffn, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    labels = getattr(config, "num_labels", 2)
    emb_rows = config.vocab_size + config.max_position_embeddings + getattr(config, "type_vocab_size", 0)
    linear = [(h, h)] * 4 * layers + [(ffn, h), (h, ffn)] * layers + [(h, h), (labels, h)]  # (out, in)
    lin_w = sum(o * i for o, i in linear)
    lin_rows = sum(o for o, _ in linear)
    lin_b = lin_rows
    emb_w = emb_rows * h
    norms = 2 * h * (1 + 2 * layers)
    fp32 = 4 * (lin_w + lin_b + emb_w + norms)
    int8 = lin_w + 4 * lin_rows + 4 * lin_b + 4 * norms + (emb_w + 4 * emb_rows if embeddings else 4 * emb_w)
    return {"fp32_mb": fp32 / 1e6, "int8_mb": int8 / 1e6, "ratio": fp32 / int8}


__all__ = ["Candidate", "build_compression_report", "compression_report", "evaluate_classifier", "int8_size_estimate", "plot_compression", "to_markdown"]
