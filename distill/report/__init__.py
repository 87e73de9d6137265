"""One report for every run: each model (teacher, student, int8, ONNX, ...) is a row of one schema.

    entries = [ModelEntry("teacher", teacher, teacher_dir), ModelEntry("student", student, student_dir)]
    entries += [instantiate(node)(ctx) for node in cfg.quant.variants.values()]   # int8, ONNX rows
    report = build_report(entries, task, dm.val_dataloader(), ReportSettings(**cfg.speed))
    report.update(split="dev", eval_examples=872)                                  # caller's extra keys
    write_report(run_dir, report)                                 # report.json, report.md, report.png
    print(format_table(report))

``build_report`` runs every model once over the evaluated batches: the logits give the task metrics and
the parity (max |Δlogit|, agreement) against the fp32 ``student``; then it times each model, measures its
size and parameters, and adds the ratios to the ``teacher``. The row schema is documented in
:mod:`distill.report.rows`. Quantizing and exporting happen before, in the producers of the entries
(``distill.quant.variants``, ``distill.export.variants``); this package only measures and writes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from distill.data.tasks import TaskSpec
from distill.report.chart import plot_report
from distill.report.entry import ModelEntry, VariantContext
from distill.report.evaluate import evaluate_classifier, labels_of, parity, run_model, task_metrics
from distill.report.hardware import describe_hardware
from distill.report.render import format_table, replace_atomically, to_markdown, write_json, write_text
from distill.report.rows import add_ratios, make_row, parameter_split
from distill.report.timing import measure_speed, size_on_disk_mb, synthetic_inputs, time_forward


@dataclass
class ReportSettings:
    """How models are timed: batch-1 latency over ``latency_runs`` runs and throughput at
    ``throughput_batch`` (median of ``throughput_runs``), both at sequence length ``seq_len``."""

    measure_speed: bool = True
    seq_len: int = 128
    latency_runs: int = 50
    throughput_batch: int = 32
    throughput_runs: int = 5


def _vocab_size(entry: ModelEntry) -> int:
    for owner in (entry.model, entry.params_of):
        vocab = getattr(getattr(owner, "config", None), "vocab_size", None)
        if vocab:
            return int(vocab)
    raise ValueError(f"cannot time {entry.name!r}: neither its model nor its params_of has config.vocab_size.")


def _speed(entry: ModelEntry, settings: ReportSettings) -> dict[str, Any] | None:
    if not settings.measure_speed or entry.model is None:
        return None
    return measure_speed(entry.model, _vocab_size(entry), settings.seq_len, settings.latency_runs,
                         settings.throughput_batch, settings.throughput_runs)


def build_report(
    entries: list[ModelEntry],
    task: TaskSpec,
    dataloader: Iterable[Mapping[str, Any]] | None,
    settings: ReportSettings | None = None,
    reference: str = "teacher",
    parity_reference: str = "student",
) -> dict[str, Any]:
    """Evaluate, compare, time and measure every entry; return ``{"models", "settings", "hardware", "task"}``.

    ``dataloader`` yields GLUE batches (dicts of (B, T) int64 inputs and ``labels`` (B,)); it is read once
    and every model sees the same batches. An entry with ``metrics`` is not evaluated (nor compared, unless
    it is the ``parity_reference``); one with ``model=None`` (an artifact that cannot run here, e.g. Core ML
    off macOS) is neither evaluated nor timed. ``reference`` is the row the ratios divide by.
    """
    settings = settings or ReportSettings()
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"report rows need distinct names; got {names}.")
    batches = list(dataloader) if dataloader is not None else []
    labels = labels_of(batches)
    logits = {e.name: run_model(e.model, batches) for e in entries
              if batches and e.model is not None and (e.metrics is None or e.name == parity_reference)}
    ref_logits = logits.get(parity_reference)
    rows = []
    for entry in entries:
        metrics = entry.metrics if entry.metrics is not None else task_metrics(logits.get(entry.name, []), labels, task)
        agree = None
        if ref_logits is not None and entry.name in logits:
            agree = {"reference": parity_reference, **parity(logits[entry.name], ref_logits)}
        rows.append(make_row(entry, task, metrics, _speed(entry, settings), agree))
    return {
        "models": add_ratios(rows, reference),
        "settings": {**asdict(settings), "reference": reference, "parity_reference": parity_reference},
        "hardware": describe_hardware(),
        "task": task.name,
    }


def write_report(run_dir: str | Path, report: dict[str, Any]) -> None:
    """Write ``report.json``, ``report.md`` and ``report.png`` (the chart) in ``run_dir``, each atomically."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = report.get("models") or []
    metric = next((r["metric"] for r in rows if r.get("metric")), "score")
    write_json(run_dir / "report.json", report)
    write_text(run_dir / "report.md", to_markdown(report))
    replace_atomically(run_dir / "report.png", lambda tmp: plot_report(rows, tmp, metric))


def flat_metrics(report: dict[str, Any]) -> dict[str, float]:
    """``{<model>_score, <model>_<metric> for every task metric, <model>_retention}`` of every row."""
    flat: dict[str, float] = {}
    for row in report.get("models") or []:
        name = row["model"]
        if row.get("score") is not None:
            flat[f"{name}_score"] = row["score"]
        flat.update({f"{name}_{k}": v for k, v in (row.get("metrics") or {}).items()})
        if row.get("retention") is not None:
            flat[f"{name}_retention"] = row["retention"]
    return flat


__all__ = [
    "ModelEntry", "ReportSettings", "VariantContext", "add_ratios", "build_report", "describe_hardware",
    "evaluate_classifier", "flat_metrics", "format_table", "labels_of", "make_row", "measure_speed",
    "parameter_split", "parity", "plot_report", "run_model", "size_on_disk_mb", "synthetic_inputs",
    "task_metrics", "time_forward", "to_markdown", "write_report",
]
