"""Stage ``distill`` (the default): teacher (cached) → phases → the saved student → quantized variants → report."""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from distill.blocks import build_datamodule, save_model
from distill.config import build, check_pair
from distill.console import seed_everything
from distill.data.augment import augment_train_set
from distill.distributed import leave_training
from distill.models.student import pretrained_student
from distill.models.teacher import load_classifier, load_config
from distill.phases import adopt_previous_run, fit_task_phases, plan_phases, run_general_phase
from distill.quant import is_qat_prepared, strip_fake_quant
from distill.report import ModelEntry, VariantContext
from distill.stages.report import report_models
from distill.stages.teacher import prepare_teacher

log = logging.getLogger("distill")


def build_student(cfg: DictConfig, teacher, init_from: Path | None):
    """The task student: the ``student`` preset built from ``teacher``, or loaded from a general phase's result."""
    if init_from is None:
        return build(cfg.student, "student", teacher=teacher)
    return pretrained_student(teacher, str(init_from), attn_implementation=cfg.student.get("attn_implementation"))


def run(cfg: DictConfig, output_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    teacher_name = str(cfg.teacher.name_or_path)
    load_config(teacher_name)
    phases = plan_phases(cfg, output_dir)  # every phase's loss checked against the models' configs first
    dm = build_datamodule(cfg, teacher_name)
    teacher_path, _ = prepare_teacher(cfg, dm)
    if not phases[0].implicit:
        adopt_previous_run(cfg, output_dir)
    init_from = None
    for phase in (p for p in phases if p.own_models):  # general distillation: its own teacher and text
        init_from = run_general_phase(phase)
    seed_everything(cfg.seed)
    teacher = load_classifier(teacher_path, dm.spec)  # switched to eager attention by phases that need it
    student = build_student(cfg, teacher, init_from)
    check_pair(student, teacher, dm.tokenizer)
    if cfg.augment.enabled:
        augment_train_set(cfg, dm, teacher, teacher_path)
    fit_task_phases([p for p in phases if not p.own_models], student, teacher, dm, output_dir)
    if not leave_training():  # DDP: every rank fitted the same student; rank 0 alone saves and reports it
        return {}, {}

    trained = student
    if is_qat_prepared(student):  # the shipped fp32 student is the QAT-trained weights without fake quant
        student = strip_fake_quant(copy.deepcopy(student))
    student_dir = save_model(student, dm.tokenizer, output_dir / "student")
    entries = [ModelEntry("teacher", teacher, Path(teacher_path), format="pytorch", precision="fp32"),
               ModelEntry("student", student, student_dir, format="pytorch", precision="fp32")]
    variants = cfg.quant.get("variants") or {}
    if variants:  # int8 / exported students: more rows of the same report
        dm.setup("validate")
        ctx = VariantContext(trained=trained, student=student, student_dir=student_dir, tokenizer=dm.tokenizer,
                             out_dir=output_dir / "compression", calibration=list(dm.val_dataloader()))
        entries += [build(node, f"quant.variants.{name}")(ctx) for name, node in variants.items()]
    return report_models(cfg, dm, output_dir, entries)
