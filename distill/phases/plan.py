"""Phases of a run: their effective configs and every check before any work."""

from __future__ import annotations

import copy
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from transformers import AutoConfig, AutoModelForSequenceClassification

from distill.blocks import build_callbacks, build_objective
from distill.config import build
from distill.errors import ConfigError, DistillError

log = logging.getLogger("distill")

PHASE_KEYS = ("order", "loss", "max_epochs", "max_steps", "optimizer", "scheduler", "trainer", "callbacks",
              "models", "data", "seed", "cache")
MERGED = ("optimizer", "scheduler", "trainer", "callbacks")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class Phase:
    """One fit: its name, config key for messages (``phases.prediction``), effective config and folder."""

    name: str
    key: str
    position: int
    count: int
    cfg: DictConfig
    out_dir: Path
    final: bool

    @property
    def implicit(self) -> bool:
        """The one phase of a run without ``phases``: the run config itself, in the run folder."""
        return self.key == "loss"

    @property
    def node(self) -> DictConfig:
        return self.cfg.phases[self.name]

    @property
    def own_models(self) -> bool:
        """True for a phase with its own teacher and data (general distillation)."""
        return not self.implicit and self.node.get("models") is not None

    @property
    def label(self) -> str:
        return f"Phase {self.position}/{self.count} {self.name}"


def phase_config(cfg: DictConfig, name: str, out_dir: Path) -> DictConfig:
    """The effective run config of phase ``name``: its loss, its changes merged over the run's, its folder.

    The one place a phase's config is made; ``cfg`` itself is never changed.
    """
    node = cfg.phases[name]
    out = copy.deepcopy(cfg)
    OmegaConf.set_readonly(out, False)
    with open_dict(out):
        out.loss = node.loss
        for group in MERGED:
            change = node.get(group)
            if group == "callbacks" and change is not None:
                # changes to the run's callbacks apply only where the run has them (callbacks=none: none); a
                # complete callback of the phase's own (its _target_: freezing, pruning) is part of the recipe
                change = {k: v for k, v in change.items()
                          if (out.callbacks or {}).get(k) or (isinstance(v, DictConfig) and v.get("_target_"))} or None
            if change is not None:
                out[group] = OmegaConf.merge(out[group], change)
        for field in ("max_epochs", "max_steps"):
            if node.get(field) is not None:
                out.trainer[field] = node[field]
        out.paths.output_dir = str(out_dir)
    return out


# ---- planning: every check before any work ----------------------------------------------------
def plan_phases(cfg: DictConfig, output_dir: Path) -> list[Phase]:
    """The phases to run, in order, each one's objective checked against the models' geometry first.

    Structure, temperatures, weights and schedules are checked first; then every objective is built
    for the student and teacher *configs* (students built on the meta device, no weights), so a layer
    past a model's depth, a width or head mismatch, or an attention term that needs eager attention
    stops the run before the teacher is fine-tuned or any phase starts.
    """
    if cfg.get("phases") is None:
        build(cfg.loss, "loss", terms={}, weights={})  # temperature / alpha / schedules, before any model
        phases = [Phase("distill", "loss", 1, 1, cfg, output_dir, final=True)]
    else:
        phases = _parse(cfg, output_dir)
    task_configs = model_configs(cfg.student, str(cfg.teacher.name_or_path))
    student_config = task_configs[0].config if task_configs else None  # the student each phase starts from
    for phase in phases:
        configs = task_configs
        if phase.own_models:
            pair = phase_pair(phase)
            pair.check()
            phase_data(phase, pair.tokenizer())  # its texts found and its settings checked (cheap)
            configs = model_configs(cfg.student, pair.teacher_path)
        if configs is not None:
            check_attention(cfg, phase_objective(phase, *configs), phase.key)
        for callback in build_callbacks(phase.cfg, with_quant=False):  # their settings (pruning targets, ...) checked now
            if student_config is not None and callable(getattr(callback, "plan_student", None)):  # a cut: next start
                student_config = callback.plan_student(student_config, None if phase.implicit else
                                                       f"{phase.key}.callbacks.cut_to")
    return phases


def _parse(cfg: DictConfig, output_dir: Path) -> list[Phase]:
    entries = cfg.phases
    if not isinstance(entries, DictConfig) or len(entries) == 0:
        raise ConfigError("phases must be a mapping of phase name -> {order, loss, max_epochs, ...}, or null.")
    if cfg.ckpt_path not in (None, "auto"):
        raise ConfigError(f"ckpt_path={cfg.ckpt_path!r} can't pick a phase; with phases use ckpt_path=auto or null.")
    for name, entry in entries.items():
        _check_entry(str(name), entry)
    names = sorted(entries, key=lambda n: (entries[n].order, str(n)))
    own = [entries[n].get("models") is not None for n in names]
    if own != sorted(own, reverse=True):
        first_task = own.index(False)
        late = names[own.index(True, first_task)]
        raise ConfigError(f"phases.{late} has its own teacher (models), so its order must come before the phases "
                          f"that use the task teacher (phases.{names[first_task]}).")
    phases = []
    for i, name in enumerate(names):
        out_dir = output_dir / "phases" / f"{i + 1}-{name}"
        phases.append(Phase(name, f"phases.{name}", i + 1, len(names), phase_config(cfg, name, out_dir), out_dir,
                            final=i == len(names) - 1))
    return phases


def _check_entry(name: str, entry: Any) -> None:
    key = f"phases.{name}"
    if not _NAME.match(name):
        raise ConfigError(f"{key}: a phase name must be one word (letters, digits, _ . -).")
    if not isinstance(entry, DictConfig):
        raise ConfigError(f"{key}={entry!r} must be a mapping with keys order, loss and optionally max_epochs.")
    unknown = sorted(set(entry) - set(PHASE_KEYS))
    if unknown:
        raise ConfigError(f"{key} has unknown keys {unknown}; allowed are {', '.join(PHASE_KEYS)}.")
    order = entry.get("order")
    if isinstance(order, bool) or not isinstance(order, int):
        raise ConfigError(f"{key}.order={order!r} must be a whole number (phases run by increasing order).")
    if not isinstance(entry.get("loss"), DictConfig):
        raise ConfigError(f"{key}.loss must be a loss node: compose a preset with `- /loss@{key}.loss: <preset>` in "
                          f"the experiment's defaults (or `+loss@{key}.loss=<preset>`), or use ${{loss}}.")
    build(entry.loss, f"{key}.loss", terms={}, weights={})
    for field, low in (("max_epochs", 1), ("max_steps", -1)):
        value = entry.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low or value == 0):
            raise ConfigError(f"{key}.{field}={value!r} must be a positive whole number.")
    seed = entry.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ConfigError(f"{key}.seed={seed!r} must be an integer, or null for the run's seed.")
    lr = (entry.get("optimizer") or {}).get("lr")
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0):
        raise ConfigError(f"{key}.optimizer.lr={lr!r} must be a positive number.")
    if (entry.get("models") is None) != (entry.get("data") is None):
        raise ConfigError(f"{key} needs both models (its own teacher) and data (its own text), or neither.")


def phase_pair(phase: Phase):
    """The teacher–student pair of a phase with its own teacher (``phases.<name>.models``)."""
    return build(phase.node.models, f"{phase.key}.models")


def phase_objective(phase: Phase, student, teacher):
    """The phase's objective for these models (or anything with a ``.config``); errors name the phase."""
    return build_objective(phase.cfg.loss, student, teacher, key=f"{phase.key}.loss")


def model_configs(student_node: DictConfig, teacher_path: str) -> tuple[SimpleNamespace, SimpleNamespace] | None:
    """Stand-ins ``(student, teacher)`` carrying only the models' HF configs; None if they can't be made cheaply.

    The student preset is built on the meta device from a meta teacher (no weights, no download); a
    student loaded from a checkpoint contributes its checkpoint's config. Anything unexpected returns
    None and leaves the error to the real build.
    """
    try:
        teacher_config = AutoConfig.from_pretrained(teacher_path)
        if student_node.get("name_or_path"):
            student_config = AutoConfig.from_pretrained(str(student_node.name_or_path))
        else:
            with torch.device("meta"):
                teacher = AutoModelForSequenceClassification.from_config(teacher_config)
                student_config = build(student_node, "student", teacher=teacher).config
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


def phase_data(phase: Phase, tokenizer):
    """The data module of a phase with its own data (``phases.<name>.data``), seeded with the phase's seed."""
    key = f"{phase.key}.data"
    return build(phase.node.data, key, tokenizer=tokenizer, seed=phase_seed(phase), config_key=key)


def phase_seed(phase: Phase) -> int:
    """``phases.<name>.seed``, or the run's ``seed`` when unset."""
    seed = phase.node.get("seed")
    return phase.cfg.seed if seed is None else seed
