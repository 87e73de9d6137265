"""Iterative cutting (Minitron): cut the current student part of the way, distil briefly, cut again.

:class:`CutTo` is a phase callback (``conf/prune/cut_to.yaml``). In its ``setup`` hook of a fit it cuts the
student as the previous phase left it to a target geometry (layers, hidden size, heads, FFN size; ``None`` keeps
the current value) with :func:`distill.prune.cut.cut_model`, ranking units by
:func:`distill.prune.importance.estimate_importance` on the first batches of the fit's own training loader, all
inside a forked, seeded RNG (the run's own draws do not move). Lightning 2.6 calls ``setup`` before it restores a
checkpoint and before ``configure_optimizers`` (see :mod:`distill.prune.neuron`), so the optimizer holds the cut
parameters and a resumed phase loads its ``last.ckpt`` into the cut shapes. A recipe chains phases, each with its
own target: ``conf/experiment/iterative_cut_sst2.yaml``.

``cut_model`` builds a new model; :func:`replace_model` moves its modules and config into the student object
that the module, the later phases and the report hold, so the cut is in place. A rerun that skips a finished
phase which cut the student first gives the student that phase's geometry (:func:`match_cut_geometry`, from
the ``cut_to.json`` the callback writes in the phase folder) and then loads its weights.

The phase's loss must read logits only (``kd``, ``ce``, ...): hidden-state and attention terms are built, with
their projections and hooks, for the student's geometry before the first fit; a cut refuses them.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn
from transformers import PreTrainedModel

from distill.checkpoint import replace_atomically
from distill.data.glue import STUDENT_PREFIX
from distill.errors import ConfigError
from distill.prune.calibration import take_batches
from distill.prune.cut import CutSettings, Geometry, cut_model, resolve_geometry
from distill.prune.importance import estimate_importance

log = logging.getLogger("distill")

KEY = "callbacks.cut_to"
RECORD = "cut_to.json"


def geometry_of(config) -> Geometry:
    """The geometry of a BERT-layout config."""
    return Geometry(**{k: getattr(config, k) for k in Geometry.__dataclass_fields__})


def replace_model(model: nn.Module, new: nn.Module) -> nn.Module:
    """Make ``model`` compute as ``new`` in place: ``new``'s child modules and config (its only other state)."""
    for name in [n for n in model._modules if n not in new._modules]:
        delattr(model, name)
    for name, child in new.named_children():
        setattr(model, name, child)
    model.config = new.config
    return model


def reshape_to(model: PreTrainedModel, geometry: Geometry) -> PreTrainedModel:
    """``model`` rebuilt in place with ``geometry`` and fresh weights (for a state dict of that geometry to load)."""
    if geometry_of(model.config) == geometry:
        return model
    config = copy.deepcopy(model.config)
    for name, value in asdict(geometry).items():
        setattr(config, name, value)
    param = next(model.parameters())
    with torch.random.fork_rng(devices=[]):  # the weights are overwritten by the caller: draw nothing of the run's
        new = type(model)._from_config(config).to(device=param.device, dtype=param.dtype)
    return replace_model(model, new.train(model.training))


def match_cut_geometry(model: PreTrainedModel, phase_dir: Path) -> PreTrainedModel:
    """Give ``model`` the geometry a finished phase in ``phase_dir`` cut it to (its ``cut_to.json``), if it cut."""
    record = Path(phase_dir) / RECORD
    if not record.is_file():
        return model
    return reshape_to(model, Geometry(**json.loads(record.read_text(encoding="utf-8"))["geometry_after"]))


def student_batch(batch: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The student's own inputs of a batch (``student_*`` when its tokenizer differs from the teacher's)."""
    if STUDENT_PREFIX + "input_ids" not in batch:
        return dict(batch)
    own = {k[len(STUDENT_PREFIX):]: v for k, v in batch.items() if k.startswith(STUDENT_PREFIX)}
    return {**own, **({"labels": batch["labels"]} if "labels" in batch else {})}


class CutTo(L.Callback):
    """Cut the current student to a target geometry at the start of a fit; the fit is then the recovery.

    Args:
        num_hidden_layers / hidden_size / num_attention_heads / intermediate_size: the target; ``None`` keeps
            the student's value. No value may exceed the student's.
        importance: ``activation`` or ``taylor``; layers: ``stride`` or ``importance`` (as ``conf/prune/cut.yaml``).
        calibration_batches / calibration_seed: how many batches of the fit's training loader rank the units.
        enabled: false leaves the student alone (a recipe enables it per phase).
        key: the config node named in messages.
    """

    def __init__(self, num_hidden_layers: int | None = None, hidden_size: int | None = None,
                 num_attention_heads: int | None = None, intermediate_size: int | None = None,
                 importance: str = "activation", layers: str = "stride", calibration_batches: int = 32,
                 calibration_seed: int = 0, enabled: bool = True, key: str = KEY) -> None:
        self.target = {"num_hidden_layers": num_hidden_layers, "hidden_size": hidden_size,
                       "num_attention_heads": num_attention_heads, "intermediate_size": intermediate_size}
        self.key, self.enabled = key, enabled
        for name, value in self.target.items():
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ConfigError(f"{key}.{name}={value!r} must be a positive whole number, or null to keep the "
                                  "student's.")
        if hidden_size is not None and num_attention_heads is not None and hidden_size % num_attention_heads:
            raise ConfigError(f"{key}.hidden_size={hidden_size} must be divisible by "
                              f"{key}.num_attention_heads={num_attention_heads}.")
        self.cut = CutSettings(importance=importance, layers=layers, calibration_batches=calibration_batches,
                               calibration_seed=calibration_seed, key=key)
        self.cut.check()
        self.summary: dict | None = None

    def geometry(self, config, key: str | None = None) -> Geometry:
        """The target against a student ``config`` (a meta or real one): a ConfigError naming the key if it can't be."""
        return resolve_geometry(config, key=key or self.key, whose="student's", **self.target)

    def plan_student(self, config, key: str | None = None):
        """At planning: check the target against the student ``config`` this phase starts from; returns the
        config the phase leaves (the next phase's start). Disabled: ``config`` itself."""
        if not self.enabled:
            return config
        out = copy.deepcopy(config)
        for name, value in asdict(self.geometry(config, key)).items():
            setattr(out, name, value)
        return out

    def _check_objective(self, pl_module: L.LightningModule) -> None:
        objective = getattr(pl_module, "objective", None)
        if objective is None:
            return
        learnable = any(True for _ in objective.parameters()) if isinstance(objective, nn.Module) else False
        if objective.requires or learnable:
            raise ConfigError(f"{self.key}: cutting the student needs a loss that reads logits only (kd, ce, ...); "
                              f"this phase's terms {objective.term_names} read hidden states or attentions, or "
                              "project them, for the uncut geometry.")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.enabled:
            return
        student = getattr(pl_module, "student", pl_module)
        geometry = self.geometry(student.config)  # a bad target stops before any calibration batch is drawn
        self._check_objective(pl_module)
        before, params_before = geometry_of(student.config), sum(p.numel() for p in student.parameters())
        frozen = {n for n, p in student.named_parameters() if not p.requires_grad}
        param = next(student.parameters())
        with torch.random.fork_rng(devices=[param.device.index or 0] if param.is_cuda else []):
            torch.manual_seed(self.cut.calibration_seed)
            batches = [student_batch(b) for b in take_batches(trainer.datamodule.train_dataloader(),
                                                              self.cut.calibration_batches)]
            if not batches:
                raise ConfigError(f"{self.key}.calibration_batches: the training loader gave no batches.")
            scores = estimate_importance(student, batches, self.cut.importance)
            new = cut_model(student, geometry, scores, layers=self.cut.layers,
                            attn_implementation=getattr(student.config, "_attn_implementation", None))
        new.to(dtype=param.dtype)
        for name, p in new.named_parameters():
            p.requires_grad_(name not in frozen)
        replace_model(student, new)
        if getattr(pl_module, "teacher", None) is not None and getattr(pl_module, "objective", None) is not None:
            pl_module.objective.attach(student, pl_module.teacher)  # hooks, if any, follow the new modules
        params_after = sum(p.numel() for p in student.parameters())
        self.summary = {"geometry_before": asdict(before), "geometry_after": asdict(geometry),
                        "importance": self.cut.importance, "layers": self.cut.layers,
                        "params_before": params_before, "params_after": params_after}
        log.info("Cut to (%s): L%d H%d A%d F%d -> L%d H%d A%d F%d; parameters %d -> %d", self.cut.importance,
                 *asdict(before).values(), *asdict(geometry).values(), params_before, params_after)
        if trainer.is_global_zero:
            out = Path(trainer.default_root_dir)
            out.mkdir(parents=True, exist_ok=True)
            replace_atomically(out / RECORD, lambda tmp: tmp.write_text(json.dumps(self.summary), encoding="utf-8"))
