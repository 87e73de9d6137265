"""Stage ``eval``: score a saved model (and optionally the teacher it came from) on a split; the same report.

A student whose tokenizer differs from the teacher's (``student.tokenizer``, ``student.trim_vocab``) is scored
on its own tokens: batches carry the teacher's inputs and the student's side by side, each model reads its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from distill.blocks import build_datamodule
from distill.errors import ConfigError
from distill.models.teacher import load_classifier, load_config
from distill.report import ModelEntry
from distill.report.evaluate import reads_student_inputs
from distill.stages.report import report_models


def run(cfg: DictConfig, output_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if not cfg.eval.model_path:
        raise ConfigError("eval.model_path is not set; stage=eval needs a saved model folder (e.g. a run's student/).")
    path = str(cfg.eval.model_path)
    load_config(path)
    teacher = str(cfg.eval.teacher_path) if cfg.eval.teacher_path else None
    # with a teacher, the data module reads its tokenizer and the student's own rides along when it differs
    dm = build_datamodule(cfg, teacher or path)
    if teacher is not None and (Path(path) / "tokenizer_config.json").is_file():
        dm.use_student_tokenizer(path)
    student = load_classifier(path, dm.spec)
    if dm.student_tokenizer is not None:
        reads_student_inputs(student)
    entries = [ModelEntry("student", student, Path(path), format="pytorch", precision="fp32")]
    if teacher is not None:
        entries.insert(0, ModelEntry("teacher", load_classifier(teacher, dm.spec), Path(teacher), format="pytorch",
                                     precision="fp32"))
    return report_models(cfg, dm, output_dir, entries)
