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
from distill.data.glue import load_tokenizer, same_tokenization, student_view
from distill.distributed import leave_training
from distill.errors import ConfigError
from distill.losses.mlm import MaskedLMLoss, MaskedSoftKL
from distill.models.student import pretrained_student
from distill.models.teacher import load_classifier, load_config
from distill.models.trim_student import trim_notes, with_trimmed_vocabulary
from distill.phases import adopt_previous_run, fit_task_phases, plan_phases, run_general_phase
from distill.phases.plan import model_configs, phase_objective
from distill.quant import is_qat_prepared, strip_fake_quant
from distill.report import ModelEntry, VariantContext
from distill.report.evaluate import reads_student_inputs
from distill.stages.report import report_models
from distill.stages.teacher import prepare_teacher

log = logging.getLogger("distill")

ALIGNED_OUTPUTS = frozenset({"hidden_states", "attentions", "qkv"})
ALIGNED_TERMS = (MaskedSoftKL, MaskedLMLoss)  # per-token vocabulary distributions: one token sequence


def student_tokenizer_differs(cfg: DictConfig, teacher_name: str, phases) -> bool:
    """Whether ``student.tokenizer`` tokenizes differently from the teacher; if so, every setting that needs one
    token sequence for both (hidden-state / attention / MLM terms, augmentation, general phases) stops here
    with one sentence, before any work. A trimmed vocabulary (``student.trim_vocab``) splits every training
    sentence into the teacher's very pieces, so hidden-state and attention terms stay allowed with it."""
    name = cfg.student.get("tokenizer")
    if name is None or same_tokenization(load_tokenizer(name, "student.tokenizer"),
                                         load_tokenizer(teacher_name, "teacher.name_or_path")):
        return False
    trimmed = cfg.student.get("trim_vocab") is True  # aligned sequences, other vocabulary
    reason = ("but student.trim_vocab=true gives the student another vocabulary" if trimmed
              else "but student.tokenizer differs from the teacher's")
    instead = "set student.trim_vocab=false" if trimmed else "use the teacher's tokenizer"
    if cfg.augment.enabled:
        raise ConfigError(f"augment.enabled=true swaps the teacher's word pieces, {reason}; turn augmentation off "
                          f"or {instead}.")
    configs = model_configs(cfg.student, teacher_name)
    for phase in phases:
        if phase.own_models:
            raise ConfigError(f"{phase.key} (general distillation) trains on its teacher's tokens, {reason}; drop "
                              f"the phase or {instead}.")
        parts = phase_objective(phase, *configs).parts if configs is not None else {}
        for name, term in parts.items():
            key = f"{phase.key}.{'' if name in ('soft', 'hard') else 'terms.'}{name}"
            if trimmed:  # same pieces in the same places: only per-token distributions over the vocabulary differ
                if isinstance(term, ALIGNED_TERMS):
                    raise ConfigError(f"{key} compares per-token distributions over the teacher's whole vocabulary, "
                                      f"{reason}; {instead} or use another loss.")
                continue
            if ALIGNED_OUTPUTS & set(getattr(term, "requires", ())) or isinstance(term, ALIGNED_TERMS):
                raise ConfigError(f"{key} needs the teacher's and the student's token sequences aligned, {reason}; "
                                  "use logit-level losses (kd, ce, ...) or the teacher's tokenizer.")
    return True


def build_student(cfg: DictConfig, teacher, init_from: Path | None):
    """The task student: the ``student`` preset built from ``teacher``, or loaded from a general phase's result."""
    if init_from is None:
        return build(cfg.student, "student", teacher=teacher)
    return pretrained_student(teacher, str(init_from), attn_implementation=cfg.student.get("attn_implementation"))


def run(cfg: DictConfig, output_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    teacher_name = str(cfg.teacher.name_or_path)
    load_config(teacher_name)
    cfg = with_trimmed_vocabulary(cfg)  # student.trim_vocab: student.tokenizer = the trimmed teacher tokenizer
    phases = plan_phases(cfg, output_dir)  # every phase's loss checked against the models' configs first
    own_tokens = student_tokenizer_differs(cfg, teacher_name, phases)
    dm = build_datamodule(cfg, teacher_name)
    teacher_path, _ = prepare_teacher(cfg, dm)
    if own_tokens:  # from here on batches carry the student's inputs (student_*) beside the teacher's
        dm.use_student_tokenizer(cfg.student.tokenizer)
    if not phases[0].implicit:
        adopt_previous_run(cfg, output_dir)
    init_from = None
    for phase in (p for p in phases if p.own_models):  # general distillation: its own teacher and text
        init_from = run_general_phase(phase)
    seed_everything(cfg.seed)
    teacher = load_classifier(teacher_path, dm.spec)  # switched to eager attention by phases that need it
    student = build_student(cfg, teacher, init_from)
    check_pair(student, teacher, dm.tokenizer, dm.student_tokenizer)
    if cfg.augment.enabled:
        augment_train_set(cfg, dm, teacher, teacher_path)
    fit_task_phases([p for p in phases if not p.own_models], student, teacher, dm, output_dir)
    if not leave_training():  # DDP: every rank fitted the same student; rank 0 alone saves and reports it
        return {}, {}

    trained = student
    if is_qat_prepared(student):  # the shipped fp32 student is the QAT-trained weights without fake quant
        student = strip_fake_quant(copy.deepcopy(student))
    tokenizer = dm.student_tokenizer or dm.tokenizer  # the student ships with the tokenizer it reads
    student_dir = save_model(student, tokenizer, output_dir / "student")
    entries = [ModelEntry("teacher", teacher, Path(teacher_path), format="pytorch", precision="fp32"),
               ModelEntry("student", student, student_dir, format="pytorch", precision="fp32")]
    variants = cfg.quant.get("variants") or {}
    if variants:  # int8 / exported students: more rows of the same report
        dm.setup("validate")
        ctx = VariantContext(trained=trained, student=student, student_dir=student_dir, tokenizer=tokenizer,
                             out_dir=output_dir / "compression",
                             calibration=[student_view(b) for b in dm.val_dataloader()])
        made = [build(node, f"quant.variants.{name}")(ctx) for name, node in variants.items()]
        entries += [entry for entry in made if entry is not None]  # None: the variant has nothing to report
    if dm.student_tokenizer is not None:  # every student row reads the student's inputs of the dev batches
        for entry in entries[1:]:
            reads_student_inputs(entry.model)
    entries[1].notes.update(trim_notes(cfg, dm))  # student.trim_vocab: how much of the split becomes [UNK]
    return report_models(cfg, dm, output_dir, entries)
