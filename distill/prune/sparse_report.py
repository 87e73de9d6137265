"""``scripts/sparse_export.py <run>``: the compressed export of a finished run's student, and its report rebuilt.

Writes ``<run>/export/sparse/`` (:mod:`distill.prune.sparse_export`), scores and times it over the task's dev
set as the ``student_sparse`` row, and merges it into the run's report (the existing rows are kept; rows
written before the ``geometry`` / ``sparsity`` columns existed get them, measured on the saved model their
``path`` names). For runs made before ``+prune=magnitude`` added the row itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.errors import ConfigError
from distill.export.run_report import dev_datamodule, merge_report
from distill.prune.sparsity import model_sparsity
from distill.prune.variants import SparseExport
from distill.report import ModelEntry, ReportSettings, VariantContext, build_report, write_report
from distill.report.rows import geometry


def _speed_settings(run_dir: Path, model) -> ReportSettings:
    """The run's own timing settings (``measure_speed``, ``speed.*``), at most the model's longest sequence."""
    path = run_dir / ".hydra" / "config.yaml"
    settings = ReportSettings()
    if path.is_file():
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(path)
        speed = OmegaConf.to_container(cfg.get("speed") or {}, resolve=False)
        settings = ReportSettings(measure_speed=bool(cfg.get("measure_speed", True)),
                                  **{k: v for k, v in speed.items() if k in ReportSettings.__dataclass_fields__})
    settings.seq_len = min(settings.seq_len, int(getattr(model.config, "max_position_embeddings", settings.seq_len)))
    return settings


def fill_structure(rows: list[dict[str, Any]]) -> int:
    """Give rows without ``geometry`` / ``sparsity`` keys the values of the Hugging Face model folder at their
    ``path`` (others get ``None``); returns how many were measured."""
    from transformers import AutoModelForSequenceClassification

    measured = 0
    for row in rows:
        if "sparsity" in row and "geometry" in row:
            continue
        path = Path(row["path"]) if row.get("path") else None
        model = None
        if path is not None and (path / "config.json").is_file() and any(path.glob("*.safetensors")):
            model = AutoModelForSequenceClassification.from_pretrained(path)
            measured += 1
        row["geometry"], row["sparsity"] = geometry(model), model_sparsity(model)
    return measured


def sparse_report(run_dir: str | Path, data_dir: str | None = None, task: str | None = None) -> dict[str, Any]:
    """Export ``<run_dir>/student`` sparsely to ``<run_dir>/export/sparse/`` and update the run's report;
    returns ``{"written": {row: path}, "report"}``."""
    from transformers import AutoTokenizer

    from distill.models.teacher import load_classifier

    run_dir = Path(run_dir)
    student_dir = run_dir / "student"
    if not (student_dir / "config.json").is_file():
        raise ConfigError(f"{run_dir} has no student/ folder with a saved model; give a finished run folder.")
    dm = dev_datamodule(run_dir, student_dir, task, data_dir)  # the task from the run's .hydra/config.yaml
    dm.setup("validate")
    batches = list(dm._loader("dev", False, dm.eval_batch_size))
    model = load_classifier(str(student_dir), dm.spec)
    ctx = VariantContext(trained=model, student=model, student_dir=student_dir,
                         tokenizer=AutoTokenizer.from_pretrained(student_dir), out_dir=run_dir / "export")
    entries = [ModelEntry("student", model, student_dir), SparseExport()(ctx)]
    report = build_report(entries, dm.spec, batches, _speed_settings(run_dir, model))
    old = json.loads((run_dir / "report.json").read_text()) if (run_dir / "report.json").is_file() else {}
    merged = merge_report(run_dir / "report.json", report)
    merged.pop("edge_export", None)  # merge_report's record of an edge export: keep the run's own, if any
    if "edge_export" in old:
        merged["edge_export"] = old["edge_export"]
    merged["sparse_export"] = {"settings": report["settings"], "hardware": report["hardware"]}
    fill_structure(merged["models"])
    write_report(run_dir, merged)
    return {"written": {e.name: str(e.path) for e in entries[1:]}, "report": merged}
