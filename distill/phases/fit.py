"""The one fit path of every phase, and the run of the phases that use the task teacher and data."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from omegaconf import DictConfig

from distill.blocks import build_trainer
from distill.checkpoint import find_resume_checkpoint, replace_atomically, run_signature
from distill.config import build
from distill.data.tasks import get_task
from distill.module import DistillationModule
from distill.phases.plan import Phase, check_attention, phase_objective
from distill.prune.iterative import match_cut_geometry
from distill.prune.neuron import match_ffn_widths
from distill.teacher_cache import prepare_teacher_outputs

log = logging.getLogger("distill")

DONE, STATE, STUDENT = "done.json", "student.pt", "student"


def fit_phase(phase: Phase, objective, student, teacher, dm, resume_root: Path | None = None):
    """Fit ``student`` (in place) against ``teacher`` with ``objective`` on ``dm``; returns the Trainer.

    The one fit path of every phase: the implicit one, task phases and general distillation alike.
    The final phase ends on its best checkpoint (by ``val/score``) when it has one.
    """
    if "attentions" in objective.requires:
        teacher.set_attn_implementation("eager")
        student.set_attn_implementation("eager")
    module = DistillationModule(
        student, teacher, get_task(phase.cfg.data.task), objective=objective,
        optimizer=build(phase.cfg.optimizer, "optimizer"), scheduler=build(phase.cfg.scheduler, "scheduler"),
    )
    options = phase.cfg.get("compile") or {}
    if options.get("enabled"):
        module.compile_student(options.get("backend", "inductor"), options.get("mode"), options.get("dynamic", True))
    module.teacher_outputs = prepare_teacher_outputs(phase.cfg.teacher, Path(phase.cfg.paths.cache_dir), objective,
                                                     student, teacher, dm)
    phase.out_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(phase.cfg, phase.out_dir, with_quant=phase.final)  # QAT: the last phase only
    ckpt = find_resume_checkpoint(phase.cfg.ckpt_path, phase.out_dir, resume_root)
    if not phase.implicit:
        log.info("%s: %s epochs, loss terms %s, in %s", phase.label, phase.cfg.trainer.max_epochs,
                 objective.term_names, phase.out_dir)
    if ckpt:
        log.info("Resuming from %s", ckpt)
    trainer.fit(module, dm, ckpt_path=ckpt)
    if phase.final:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        if best and Path(best).is_file():
            module.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
    return trainer


def finish(phase: Phase, trainer, write_result) -> None:
    """Write the phase's result (``write_result(folder)``) and then ``done.json``, each atomically; under DDP
    rank 0 writes and the other ranks wait for it (they would race on the same temporary files)."""
    if trainer.is_global_zero:
        write_result(phase.out_dir)
        loss = trainer.callback_metrics.get("train/loss")
        info = {"name": phase.name, "global_step": trainer.global_step, "epochs": trainer.current_epoch,
                "train_loss": None if loss is None else float(loss)}
        replace_atomically(phase.out_dir / DONE, lambda tmp: tmp.write_text(json.dumps(info, indent=2)))
    trainer.strategy.barrier("phase-finished")


def fit_task_phases(phases: list[Phase], student, teacher, dm, output_dir: Path) -> None:
    """Fit ``student`` through the phases that use the task teacher and data, in order (in place).

    Every phase's objective is built, and so checked, before the first fit.
    """
    objectives = [phase_objective(p, student, teacher) for p in phases]
    for phase, objective in zip(phases, objectives):
        check_attention(phase.cfg, objective, phase.key)
    if phases[0].implicit:
        fit_phase(phases[0], objectives[0], student, teacher, dm, resume_root=output_dir.parent)
        return
    for phase, objective in zip(phases, objectives):
        if (phase.out_dir / DONE).is_file():
            state = torch.load(phase.out_dir / STATE, map_location="cpu", weights_only=True)
            match_cut_geometry(student, phase.out_dir)  # a phase that cut the student (CutTo) saved a smaller one
            match_ffn_widths(student, state)  # a phase that pruned FFN neurons saved the narrower layers
            student.load_state_dict(state)
            log.info("%s already finished; skipped (weights from %s)", phase.label, phase.out_dir / STATE)
            continue
        trainer = fit_phase(phase, objective, student, teacher, dm)
        finish(phase, trainer, lambda d: replace_atomically(d / STATE, lambda tmp: torch.save(student.state_dict(), tmp)))


def adopt_previous_run(cfg: DictConfig, output_dir: Path) -> None:
    """``ckpt_path=auto`` in a fresh run folder: copy ``phases/`` of the newest unfinished identical run.

    "Identical" means the same :func:`distill.checkpoint.run_signature` (composed config and overrides, as
    for single-phase resume); finished runs (with a ``report.json``) are never resumed.
    """
    mine = run_signature(output_dir)
    if cfg.ckpt_path != "auto" or (output_dir / "phases").exists() or mine is None:
        return
    candidates = [
        d for d in output_dir.parent.glob("*/phases")
        if d.parent != output_dir and not (d.parent / "report.json").exists() and run_signature(d.parent) == mine
    ]
    if candidates:
        source = max(candidates, key=lambda d: d.stat().st_mtime)
        log.info("Resuming the phases of %s", source.parent)
        shutil.copytree(source, output_dir / "phases")
