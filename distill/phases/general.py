"""Phases with their own teacher and text (general distillation): run once, cached by the key of their inputs."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import tempfile
from pathlib import Path

import torch
from omegaconf import OmegaConf

from distill.config import check_pair
from distill.console import seed_everything
from distill.models.teacher import publish_dir
from distill.phases.fit import DONE, STUDENT, finish, fit_phase
from distill.phases.plan import (
    MERGED,
    Phase,
    check_attention,
    phase_data,
    phase_objective,
    phase_pair,
    phase_seed,
)

log = logging.getLogger("distill")


def run_general_phase(phase: Phase) -> Path:
    """Run a phase with its own teacher and data (or reuse it) and return its saved student folder.

    Seeded with ``phases.<name>.seed``, else the run's ``seed``: a fixed phase seed lets task runs with
    several seeds start from one general student, as TinyBERT's task runs all start from its one model.
    """
    pair = phase_pair(phase)
    tokenizer = pair.tokenizer()
    dm = phase_data(phase, tokenizer)
    done = _finished_dir(phase, dm)
    if done is not None:
        return done / STUDENT
    seed_everything(phase_seed(phase))
    student, teacher = pair.build(phase.cfg.student)
    check_pair(student, teacher, tokenizer)
    objective = phase_objective(phase, student, teacher)
    check_attention(phase.cfg, objective, phase.key)
    texts = len(getattr(dm, "texts", ()))
    log.info("%s: general distillation of %s on %d texts in %s", phase.label, pair.teacher_path, texts, phase.out_dir)
    if texts > 20000 and not torch.cuda.is_available():
        # measured: 97,617 texts x 1 epoch of the tiny student took 74 min on one CPU core (objectives.md)
        log.info("No GPU: for the tiny student this phase takes about %d min per epoch on one CPU core (once: "
                 "cached; a killed run resumes); %s.data.max_samples=20000 distils on a seeded subset instead.",
                 round(texts / 97617 * 74), phase.key)
    trainer = fit_phase(phase, objective, student, teacher, dm)

    def save(folder: Path) -> None:
        pair.save(student, folder / STUDENT)
        tokenizer.save_pretrained(folder / STUDENT)

    finish(phase, trainer, save)
    if trainer.is_global_zero:  # one writer of the shared cache entry; the others wait until it is there
        _publish(phase, dm)
    trainer.strategy.barrier("phase-published")
    return phase.out_dir / STUDENT


def phase_key(phase: Phase, dm) -> str:
    """Cache folder name of a cached phase: its name and a hash of everything that shapes its result."""
    node = OmegaConf.to_container(phase.node, resolve=True)
    for key in ("cache", "seed", "max_epochs", "max_steps", *MERGED):  # effective values below: an unset lr
        node.pop(key, None)                                              # and the same run lr give one entry
    parts = {"phase": node, "student": phase.cfg.student, "optimizer": phase.cfg.optimizer,
             "scheduler": phase.cfg.scheduler}
    plain = {k: v if isinstance(v, dict) else OmegaConf.to_container(v, resolve=True) for k, v in parts.items()}
    plain["trainer"] = {k: phase.cfg.trainer[k] for k in ("max_epochs", "max_steps")}
    plain["seed"] = phase_seed(phase)
    plain["data"] = dm.fingerprint() if hasattr(dm, "fingerprint") else None
    blob = json.dumps(plain, sort_keys=True, default=str)
    return f"{phase.name}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


def _cache_dir(phase: Phase, dm) -> Path | None:
    if not phase.node.get("cache"):
        return None
    return Path(phase.cfg.paths.cache_dir) / "phases" / phase_key(phase, dm)


def _finished_dir(phase: Phase, dm) -> Path | None:
    """Where this phase's result already is: this run folder (a resumed run) or the phase cache."""
    if (phase.out_dir / DONE).is_file():
        log.info("%s already finished; skipped (student from %s)", phase.label, phase.out_dir / STUDENT)
        return phase.out_dir
    cached = _cache_dir(phase, dm)
    if cached is not None and (cached / DONE).is_file():
        log.info("%s: reusing the result cached at %s", phase.label, cached)
        return cached
    return None


def _publish(phase: Phase, dm) -> None:
    final = _cache_dir(phase, dm)
    if final is None:
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent))
    shutil.copytree(phase.out_dir / STUDENT, tmp / STUDENT)
    shutil.copy2(phase.out_dir / DONE, tmp / DONE)  # done.json last: a cache entry is complete when it has one
    publish_dir(tmp, final)


