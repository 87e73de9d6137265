"""Multi-phase distillation: one Trainer fit per phase, the student carried from phase to phase.

A run config without ``phases`` is one implicit phase written straight into the run folder (its
``checkpoints/``, logs, resume by ``ckpt_path``), exactly the single fit it always was. With::

    phases:
      - {name: intermediate, loss: ${loss_presets.intermediate}, max_epochs: 2}
      - {name: prediction, loss: tinybert_pred, max_epochs: 1, optimizer: {lr: 3.0e-5}}

each phase runs its own fit with its own objective in ``<run>/phases/<i>-<name>/`` (checkpoints, CSV
logs). ``loss`` is a loss node (usually an interpolation of a preset composed by a defaults entry
``/loss@loss_presets.<x>: <preset>``) or the name of a ``conf/loss/`` preset. ``max_epochs``/``max_steps``
set the phase's trainer; ``optimizer``, ``scheduler`` and ``trainer`` nodes are merged over the run's.
A finished phase leaves ``student.pt`` (the student's weights) and ``done.json``; a rerun of the same
run folder — or, with ``ckpt_path=auto``, a fresh run launched with the same overrides — skips the
finished phases and resumes the unfinished one from its ``last.ckpt``. Intermediate phases hand on
their last weights; the final phase restores its best checkpoint (by ``val/score``) like a plain run.
With ``quant=qat_int8`` only the final phase trains with fake quantization (``quant.start_fraction`` of
that phase's steps): matching the teacher's attention or hidden states in int8 would fit weights that
the prediction phase moves anyway.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from transformers import AutoConfig, AutoModelForSequenceClassification

from distill.checkpoint import find_resume_checkpoint, run_signature
from distill.config import build
from distill.errors import ConfigError, DistillError
from distill.module import DistillationModule

log = logging.getLogger("distill")

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
PHASE_KEYS = ("name", "loss", "max_epochs", "max_steps", "optimizer", "scheduler", "trainer")
DONE, STATE = "done.json", "student.pt"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Phase:
    """One fit: its ``key`` for messages (``phases[1]``), loss node, trainer/optimizer changes and folder."""

    index: int
    name: str
    key: str
    loss: DictConfig
    changes: dict[str, Any]
    out_dir: Path
    final: bool

    @property
    def implicit(self) -> bool:
        """The one phase of a run without ``phases``: the run config itself, in the run folder."""
        return self.key == "loss"

    def config(self, cfg: DictConfig) -> DictConfig:
        """The run config for this phase: its loss, merged changes and its own output folder."""
        if self.implicit:
            return cfg
        out = copy.deepcopy(cfg)
        with open_dict(out):
            out.loss = self.loss
            for group, node in self.changes.items():
                out[group] = OmegaConf.merge(out[group], node)
            out.paths.output_dir = str(self.out_dir)
        return out


def plan_phases(cfg: DictConfig, output_dir: Path) -> list[Phase]:
    """The phases to run, each one's objective checked against the run's geometry before any training.

    Structure, temperatures, weights and schedules are checked first; then every objective is built
    for the student and teacher *configs* (students built on the meta device, no weights), so a layer
    past a model's depth, a width or head mismatch, or an attention term that needs eager attention
    stops the run before the teacher is fine-tuned or any phase starts.
    """
    phases = _parse(cfg, output_dir)
    configs = model_configs(cfg)
    if configs is not None:
        for phase in phases:
            check_attention(cfg, phase_objective(phase, phase.config(cfg), *configs), phase.key)
    return phases


def _parse(cfg: DictConfig, output_dir: Path) -> list[Phase]:
    if cfg.get("phases") is None:
        build(cfg.loss, "loss", terms={}, weights={})  # temperature / alpha / schedules, before any model
        return [Phase(0, "distill", "loss", cfg.loss, {}, output_dir, final=True)]
    entries = cfg.phases
    if not isinstance(entries, ListConfig) or len(entries) == 0:
        raise ConfigError("phases must be a non-empty list of {name, loss, max_epochs} entries, or null.")
    if cfg.ckpt_path not in (None, "auto"):
        raise ConfigError(f"ckpt_path={cfg.ckpt_path!r} can't pick a phase; with phases use ckpt_path=auto or null.")
    phases, names = [], set()
    for i, entry in enumerate(entries):
        key = f"phases[{i}]"
        if not isinstance(entry, DictConfig):
            raise ConfigError(f"{key}={entry!r} must be a mapping with keys name, loss and optionally max_epochs.")
        unknown = sorted(set(entry) - set(PHASE_KEYS))
        if unknown:
            raise ConfigError(f"{key} has unknown keys {unknown}; allowed are {', '.join(PHASE_KEYS)}.")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name) or name in names:
            raise ConfigError(f"{key}.name={name!r} must be a unique word (letters, digits, _ . -).")
        names.add(name)
        loss = _loss_node(entry.get("loss"), f"{key}.loss")
        build(loss, f"{key}.loss", terms={}, weights={})
        changes = {g: entry[g] for g in ("optimizer", "scheduler", "trainer") if entry.get(g) is not None}
        trainer = dict(changes.pop("trainer", {}) or {})
        for field in ("max_epochs", "max_steps"):
            if entry.get(field) is not None:
                value = entry[field]
                if isinstance(value, bool) or not isinstance(value, int) or value < (1 if field == "max_epochs" else -1):
                    raise ConfigError(f"{key}.{field}={value!r} must be a positive whole number.")
                trainer[field] = value
        if trainer:
            changes["trainer"] = OmegaConf.create(trainer)
        out_dir = output_dir / "phases" / f"{i + 1}-{name}"
        phases.append(Phase(i, name, key, loss, changes, out_dir, final=i == len(entries) - 1))
    return phases


def _loss_node(value: Any, key: str) -> DictConfig:
    if isinstance(value, DictConfig):
        return value
    if isinstance(value, str) and value:
        return loss_preset(value, key)
    raise ConfigError(f"{key} must be a loss node (e.g. ${{loss_presets.x}}) or the name of a conf/loss/ preset.")


def loss_preset(name: str, key: str = "loss") -> DictConfig:
    """``conf/loss/<name>.yaml`` as Hydra composes it (its defaults list applied)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    available = sorted(p.stem for p in (CONF_DIR / "loss").glob("*.yaml"))
    if name not in available:
        raise ConfigError(f"{key}={name!r} is not a loss preset; available: {', '.join(available)}.")
    if GlobalHydra.instance().is_initialized():  # inside @hydra.main
        return compose(config_name="train", overrides=[f"loss={name}"]).loss
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=[f"loss={name}"]).loss


# ---- running -----------------------------------------------------------------------------------
def fit_phases(cfg: DictConfig, phases: list[Phase], student, teacher, dm, output_dir: Path) -> None:
    """Fit ``student`` phase by phase (in place); every phase's objective is built, and so checked, first."""
    configs = [p.config(cfg) for p in phases]
    objectives = [phase_objective(p, pcfg, student, teacher) for p, pcfg in zip(phases, configs)]
    for phase, objective in zip(phases, objectives):
        check_attention(cfg, objective, phase.key)
    multi = not phases[0].implicit
    if multi:
        adopt_previous_run(cfg, output_dir)
    for phase, pcfg, objective in zip(phases, configs, objectives):
        if multi and (phase.out_dir / DONE).is_file():
            student.load_state_dict(torch.load(phase.out_dir / STATE, map_location="cpu", weights_only=True))
            log.info("Phase %d/%d %s already finished; skipped (weights from %s)", phase.index + 1, len(phases),
                     phase.name, phase.out_dir / STATE)
            continue
        _fit_one(pcfg, phase, len(phases), objective, student, teacher, dm, output_dir, multi)


def phase_objective(phase: Phase, pcfg: DictConfig, student, teacher):
    """The phase's objective for these models (or anything with a ``.config``), errors prefixed by the phase."""
    from distill.train import build_objective  # distill.train imports this module

    try:
        return build_objective(pcfg, student, teacher)
    except ConfigError as err:
        if phase.implicit:
            raise
        raise ConfigError(f"{phase.key} ({phase.name}): {err}") from None


def model_configs(cfg: DictConfig) -> tuple[SimpleNamespace, SimpleNamespace] | None:
    """Stand-ins ``(student, teacher)`` carrying only the models' HF configs; None if they can't be made cheaply.

    The student preset is built on the meta device from a meta teacher (no weights, no download); a
    student loaded from a checkpoint contributes its checkpoint's config. Anything unexpected returns
    None and leaves the error to the real build.
    """
    try:
        teacher_config = AutoConfig.from_pretrained(str(cfg.teacher.name_or_path))
        if cfg.student.get("name_or_path"):
            student_config = AutoConfig.from_pretrained(str(cfg.student.name_or_path))
        else:
            with torch.device("meta"):
                teacher = AutoModelForSequenceClassification.from_config(teacher_config)
                student_config = build(cfg.student, "student", teacher=teacher).config
    except DistillError:
        raise
    except Exception as err:  # noqa: BLE001 - the real build reports it properly
        log.debug("Skipping the early objective check: %s", err)
        return None
    return SimpleNamespace(config=student_config), SimpleNamespace(config=teacher_config)


def check_attention(cfg: DictConfig, objective, key: str) -> None:
    """Terms reading attention probabilities need eager attention; refuse an explicit sdpa/flash choice."""
    if "attentions" not in objective.requires:
        return
    for side in ("student", "teacher"):
        impl = cfg[side].get("attn_implementation")
        if impl not in (None, "eager"):
            raise ConfigError(
                f"{key} reads attention probabilities (a term with source attentions/log_probs), which "
                f"{side}.attn_implementation={impl} does not return; set it to eager or null, or use source: scores."
            )


def _fit_one(pcfg, phase: Phase, n: int, objective, student, teacher, dm, output_dir: Path, multi: bool) -> None:
    from distill.train import build_trainer

    if "attentions" in objective.requires:
        teacher.set_attn_implementation("eager")
        student.set_attn_implementation("eager")
    module = DistillationModule(
        student, teacher, dm.spec, objective=objective,
        optimizer=build(pcfg.optimizer, "optimizer"), scheduler=build(pcfg.scheduler, "scheduler"),
    )
    phase.out_dir.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(pcfg, phase.out_dir, with_quant=phase.final)  # QAT: the last phase only
    ckpt = find_resume_checkpoint(pcfg.ckpt_path, phase.out_dir, None if multi else output_dir.parent)
    if multi:
        log.info("Phase %d/%d %s: %s epochs, loss terms %s, in %s", phase.index + 1, n, phase.name,
                 pcfg.trainer.max_epochs, _term_names(objective), phase.out_dir)
    if ckpt:
        log.info("Resuming from %s", ckpt)
    trainer.fit(module, dm, ckpt_path=ckpt)
    if phase.final:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if trainer.checkpoint_callback else ""
        if best and Path(best).is_file():
            module.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
    for term in (objective.soft, objective.hard, *objective.terms.values()):
        if callable(getattr(term, "detach", None)):
            term.detach()  # the next phase's terms hook the models afresh
    if multi:
        loss = trainer.callback_metrics.get("train/loss")
        _write_atomic(phase.out_dir / STATE, lambda fh: torch.save(student.state_dict(), fh))
        info = {"name": phase.name, "global_step": trainer.global_step, "epochs": trainer.current_epoch,
                "train_loss": None if loss is None else float(loss)}
        _write_atomic(phase.out_dir / DONE, lambda fh: fh.write(json.dumps(info, indent=2).encode()))


def _term_names(objective) -> list[str]:
    names = [n for n in ("soft", "hard") if getattr(objective, n) is not None]
    return names + list(objective.terms)


def _write_atomic(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as fh:
        write(fh)
    os.replace(tmp, path)


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
