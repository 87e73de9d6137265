"""The report step of the stages: score, size and time every model entry, write and print one report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from distill.report import ReportSettings, build_report, flat_metrics, format_table, write_report
from distill.report.render import sparsity_note


def report_models(cfg: DictConfig, dm, output_dir: Path, entries: list) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate ``entries`` on ``cfg.eval.split``, write ``report.{json,md,png}``, print the table.

    Returns the flat metrics (``student_score``, ``student_accuracy``, ``student_retention``, ...) and
    ``{"report": report}``.
    """
    split = cfg.eval.split
    dm.setup("fit" if split == "train" else "validate")
    loader = dm._loader(split, False, dm.eval_batch_size)
    settings = ReportSettings(measure_speed=cfg.measure_speed, **cfg.speed)
    report = build_report(entries, dm.spec, loader, settings)
    report.update({"split": split, "eval_examples": len(dm.datasets[split]),
                   "train_examples": len(dm.datasets["train"]) if "train" in dm.datasets else None})
    write_report(output_dir, report)
    note = sparsity_note(report)  # zeros measured, compressed sizes, dense-kernel latency
    below = f"\n{note}\n" if note else ""
    print(f"\n{dm.spec.name} {split} ({report['eval_examples']} examples)\n{format_table(report)}\n{below}", flush=True)
    return flat_metrics(report), {"report": report, "rows": report["models"]}
