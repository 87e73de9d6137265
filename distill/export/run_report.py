"""``scripts/export.py --formats executorch,litert,coreml``: export a finished run's student to the edge formats,
run each artifact in its runtime over the task's dev set, and add (or replace) its rows in the run's report.

The dev data come from the run's ``.hydra/config.yaml`` (``data.*``), or from ``task`` / ``data_dir`` for a
bare student folder. Existing rows (the teacher, the student, ...) are kept; the student is re-evaluated as
the parity reference.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from distill.errors import ConfigError
from distill.export.edge_variants import FORMAT_VARIANTS, failed_rows
from distill.export.replay import Remembered, reference_logits
from distill.export.steps import step
from distill.report import ModelEntry, ReportSettings, VariantContext, add_ratios, build_report, write_report

EDGE_FORMATS = tuple(FORMAT_VARIANTS)
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "glue"


def _run_config(run_dir: Path) -> dict[str, Any]:
    path = run_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        return {}
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(path)
    return {
        "data": OmegaConf.to_container(cfg.get("data") or {}, resolve=False),
        "speed": dict(cfg.get("speed") or {}),
    }


def dev_datamodule(run_dir: Path, student_dir: Path, task: str | None, data_dir: str | None):
    """The task's data module (student's tokenizer, local GLUE files), from the run's config or the options."""
    from distill.data.glue import GLUEDataModule

    data = _run_config(run_dir).get("data", {})
    task = task or data.get("task")
    if not task:
        raise ConfigError(
            f"{run_dir} has no .hydra/config.yaml to read the task from; pass --task (sst2, cola, mrpc, "
            "rte or stsb)."
        )
    data_dir = data_dir or os.environ.get("DISTILL_DATA_DIR") or str(DEFAULT_DATA_DIR)
    plain = {k: data.get(k) for k in ("max_length", "eval_batch_size") if isinstance(data.get(k), int)}
    dm = GLUEDataModule(task, data_dir=data_dir, source="local", tokenizer=str(student_dir), **plain)
    dm.check_files()
    return dm


def export_edge(student_dir: Path, formats: tuple[str, ...], out_dir: Path, model, tokenizer,
                task: str | None = None, data_dir: str | None = None) -> dict[str, Any]:
    """Write each edge format's artifacts under ``out_dir``, check them over the dev set and update the run's
    report (the student's parent folder when it is a run, else ``out_dir``).

    Returns ``{"written": {row: path}, "report", "failed": failed rows}``."""
    run_dir = student_dir.parent
    is_run = (run_dir / ".hydra").is_dir() or (run_dir / "report.json").is_file()
    with step("dev set: read + tokenize"):
        dm = dev_datamodule(run_dir, student_dir, task, data_dir)
        dm.setup("validate")
        batches = list(dm._loader("dev", False, dm.eval_batch_size))
    ctx = VariantContext(
        trained=model,
        student=model,
        student_dir=student_dir,
        tokenizer=tokenizer,
        out_dir=out_dir,
        calibration=batches,
    )
    edge = [variant(seq_len=dm.max_length)(ctx) for fmt in formats for variant in FORMAT_VARIANTS[fmt]]
    # the parity reference, scored from the logits the artifacts' checks were compared with (one pass)
    student = Remembered(model, batches, reference_logits(ctx))
    entries = [
        ModelEntry("student", student, student_dir, "pytorch", "fp32", params_of=model, runtime="torch"),
        *edge,
    ]
    speed = {
        k: v
        for k, v in _run_config(run_dir).get("speed", {}).items()
        if k in ReportSettings.__dataclass_fields__
    }
    settings = ReportSettings(**speed)
    settings.seq_len = min(
        settings.seq_len, int(getattr(model.config, "max_position_embeddings", settings.seq_len))
    )
    with step("report: score every row, time latency / throughput"):
        report = build_report(entries, dm.spec, batches, settings)
    report_dir = run_dir if is_run else out_dir
    with step("report: merge + write json / md / png"):
        merged = merge_report(report_dir / "report.json", report)
        write_report(report_dir, merged)
    return {
        "written": {e.name: str(e.path) for e in entries[1:]},
        "report": merged,
        "failed": failed_rows(merged),
    }


def merge_report(path: Path, new: dict[str, Any]) -> dict[str, Any]:
    """The report at ``path`` (if any) with ``new``'s rows added or replacing rows of the same name; the
    existing student row is kept (it was timed with the run) and the ratios are recomputed."""
    if not path.is_file():
        return new
    old = json.loads(path.read_text())
    rows = {r["model"]: r for r in old.get("models") or []}
    for row in new["models"]:
        if row["model"] != "student" or "student" not in rows:
            rows[row["model"]] = row
    merged = {
        **old,
        "models": add_ratios(list(rows.values()), old.get("settings", {}).get("reference", "teacher")),
    }
    merged["edge_export"] = {"settings": new["settings"], "hardware": new["hardware"]}
    return merged
