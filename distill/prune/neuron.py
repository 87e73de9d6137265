"""Neuron pruning of a trained student: remove its least important FFN neurons, leaving a smaller dense model.

:func:`prune_ffn` ranks every layer's intermediate neurons with :func:`distill.prune.importance.estimate_importance`
(``activation`` or ``taylor``) on calibration batches and slices ``intermediate.dense`` (rows) and
``output.dense`` (columns) of each layer with transformers' ``prune_linear_layer``, so the result is a plain
``*ForSequenceClassification`` whose ``config.intermediate_size`` is the new width: ``save_pretrained`` /
``from_pretrained`` in vanilla transformers round-trip it, and the CPU speed-up is real (smaller matmuls).
The target is a fraction of each layer's neurons or a parameter budget for the whole model.
(``torch.nn.utils.prune.ln_structured`` would only mask the neurons at full size: no speed-up, so it is not used.)

:class:`NeuronPruning` is the Lightning callback (``conf/prune/neuron.yaml``) that prunes the student in its
``setup`` hook of a fit, so the fit that follows is the recovery distillation. Lightning 2.6 calls ``setup``
before it restores a checkpoint and before ``configure_optimizers`` (``Trainer._run``: setup hook →
restore modules → strategy setup → ``on_fit_start``): the optimizer is built over the pruned parameters with
no rebuilding, and a resumed recovery loads its ``last.ckpt`` into the already-pruned shapes.

Why FFN neurons only and no attention heads: transformers 5 dropped ``prune_heads`` and ``config.pruned_heads``,
and ``BertConfig`` ties a head's width to ``hidden_size / num_attention_heads``; a model with heads removed at
the full residual width therefore has no vanilla config that ``from_pretrained`` rebuilds. Every layer keeps
the same number of neurons for the same reason (one ``intermediate_size``).
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn
from transformers import PreTrainedModel
from transformers.pytorch_utils import prune_linear_layer

from distill.errors import ConfigError
from distill.models.teacher import publish_dir
from distill.prune.calibration import seeded_batches
from distill.prune.cut import top
from distill.prune.importance import IMPORTANCES, estimate_importance

log = logging.getLogger("distill")

KEY = "callbacks.neuron_pruning"
# beside neuron_pruning.json in the pruning fit's folder: the student as it was just before its neurons were removed
# (the report's student_before_pruning row, conf/prune/report/before_pruning.yaml)
BEFORE = "before_pruning"


@dataclass(frozen=True)
class FFNTarget:
    """How many FFN neurons survive: ``neurons`` (fraction removed from every layer) or ``params`` (a budget)."""

    neurons: float | None = None
    params: int | None = None
    key: str = KEY

    def check(self) -> None:
        """The checks that need no model: one sentence naming the key and what is allowed."""
        if (self.neurons is None) == (self.params is None):
            raise ConfigError(f"{self.key}: set exactly one of neurons (a fraction of each layer's FFN neurons to "
                              f"remove, in [0, 1)) and params (a parameter budget); got neurons={self.neurons!r}, "
                              f"params={self.params!r}.")
        f = self.neurons
        if f is not None and (isinstance(f, bool) or not isinstance(f, (int, float)) or not 0.0 <= f < 1.0):
            raise ConfigError(f"{self.key}.neurons={f!r} must be a fraction in [0, 1) of each layer's FFN neurons.")
        p = self.params
        if p is not None and (isinstance(p, bool) or not isinstance(p, int) or p < 1):
            raise ConfigError(f"{self.key}.params={p!r} must be a positive whole number of parameters.")

    def width(self, model: nn.Module) -> int:
        """The FFN width every layer keeps for this target on ``model`` (a ConfigError if it can't be met)."""
        self.check()
        layers = ffn_layers(model, self.key)
        width = layers[0].intermediate.dense.out_features
        if self.neurons is not None:
            removed = math.floor(self.neurons * width + 0.5)  # round half up: 0.5 of 1536 is exactly 768
            if removed >= width:
                raise ConfigError(f"{self.key}.neurons={self.neurons} removes all {width} FFN neurons of each "
                                  f"layer; use a fraction below {(width - 0.5) / width:.4f}.")
            return width - removed
        total, per_neuron = count_parameters(model), neuron_cost(layers)
        floor = total - (width - 1) * per_neuron  # one neuron left in every layer
        if self.params < floor:
            embeddings = count_parameters(model.get_input_embeddings())
            raise ConfigError(f"{self.key}.params={self.params} is below the {floor} parameters the student keeps with "
                              f"one FFN neuron per layer (its word embeddings alone are {embeddings}); use at least "
                              f"{floor}.")
        return width - max(0, math.ceil((total - self.params) / per_neuron))


def count_parameters(model: nn.Module) -> int:
    """Parameters of ``model``, shared tensors once (meta tensors count too: a check needs no weights)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


def ffn_layers(model: nn.Module, key: str = KEY) -> list[nn.Module]:
    """The encoder layers of a BERT-layout model, each with its own ``intermediate.dense`` / ``output.dense``."""
    encoder = getattr(getattr(model, "base_model", model), "encoder", None)
    layers = list(getattr(encoder, "layer", None) or [])
    if not layers or not all(hasattr(layer, "intermediate") and hasattr(layer, "output") for layer in layers):
        raise ConfigError(f"{key}: neuron pruning needs a BERT-layout student (encoder.layer[i].intermediate); "
                          f"{type(model).__name__} has none (ALBERT shares one layer: prune its width instead).")
    return layers


def neuron_cost(layers: list[nn.Module]) -> int:
    """Parameters one neuron removed from every layer frees: its input row and bias, its output column. ()"""
    return sum(layer.intermediate.dense.in_features + 1 + layer.output.dense.out_features for layer in layers)


def _slice(linear: nn.Linear, index: Tensor, dim: int) -> None:
    """Keep ``index`` along ``dim`` of ``linear`` in place (the module object, and any hook on it, stays)."""
    with torch.random.fork_rng(devices=[]):  # the new layer's throwaway init must not move the run's RNG
        smaller = prune_linear_layer(linear, index.to(linear.weight.device), dim=dim)
    smaller.to(linear.weight.dtype).requires_grad_(linear.weight.requires_grad)
    linear.weight, linear.bias = smaller.weight, smaller.bias
    linear.in_features, linear.out_features = smaller.in_features, smaller.out_features


@torch.no_grad()
def slice_ffn(model: PreTrainedModel, keep: list[Tensor]) -> PreTrainedModel:
    """Keep neurons ``keep[i]`` (sorted indices, the same count per layer) of layer ``i`` of ``model``, in place."""
    layers = ffn_layers(model)
    widths = {int(k.numel()) for k in keep}
    if len(keep) != len(layers) or len(widths) != 1:
        raise ValueError(f"keep needs one index set per layer ({len(layers)}), all of one size; got sizes {widths}.")
    for layer, index in zip(layers, keep, strict=True):
        _slice(layer.intermediate.dense, index, dim=0)  # (F, D) rows
        _slice(layer.output.dense, index, dim=1)  # (D, F) columns
    model.config.intermediate_size = widths.pop()
    return model


def prune_ffn(model: PreTrainedModel, batches: Iterable[Mapping[str, Tensor]], target: FFNTarget,
              importance: str = "activation") -> dict:
    """Prune ``model`` in place to ``target`` by ``importance`` on ``batches``; returns what was done.

    Each layer keeps its ``width`` highest-scoring neurons in their original order, so a target that removes
    nothing is the identity.
    """
    width, before = target.width(model), count_parameters(model)
    layers = ffn_layers(model, target.key)
    source = layers[0].intermediate.dense.out_features
    batches = list(batches)
    if not batches:
        raise ConfigError(f"{target.key}.calibration_batches: no calibration batches were given; at least one is "
                          "needed.")
    if width == source:
        keep = [torch.arange(source) for _ in layers]
    else:
        scores = estimate_importance(model, batches, importance).neurons  # (L, F)
        keep = [top(scores[i], width) for i in range(len(layers))]
        slice_ffn(model, keep)
    return {"importance": importance, "width_before": source, "width_after": width, "layers": len(layers),
            "params_before": before, "params_after": count_parameters(model), "kept": [k.tolist() for k in keep]}


def match_ffn_widths(model: PreTrainedModel, state_dict: Mapping[str, Tensor]) -> PreTrainedModel:
    """Shrink ``model``'s FFN layers to the widths a pruned ``state_dict`` holds (whose values are then loaded).

    For a rerun that skips a finished pruned phase and loads its saved state into an unpruned student.
    """
    prefix = next((k[: -len("encoder.layer.0.intermediate.dense.weight")] for k in state_dict
                   if k.endswith("encoder.layer.0.intermediate.dense.weight")), None)
    if prefix is None:
        return model
    width = state_dict[prefix + "encoder.layer.0.intermediate.dense.weight"].shape[0]
    if width != ffn_layers(model)[0].intermediate.dense.out_features:
        slice_ffn(model, [torch.arange(width) for _ in ffn_layers(model)])
    return model


def save_before(student: nn.Module, folder: Path) -> None:
    """``student`` saved with ``save_pretrained`` at ``folder``, written in a temporary folder and published by
    :func:`distill.models.teacher.publish_dir`; a folder already there is kept (a resumed recovery starts from
    a fresh, unpruned student again)."""
    if (folder / "config.json").is_file() or not isinstance(student, PreTrainedModel):
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}."))
    student.save_pretrained(tmp)
    publish_dir(tmp, folder)


class NeuronPruning(L.Callback):
    """Prune the student's FFN neurons to a target at the start of a fit; the fit is then the recovery.

    Args:
        neurons: fraction of every layer's FFN neurons to remove, in [0, 1); or
        params: a parameter budget for the whole student (embeddings included); exactly one of the two.
        importance: ``activation`` or ``taylor`` (:mod:`distill.prune.importance`).
        calibration_batches / calibration_seed: how many training batches rank the neurons, shuffled how.
        enabled: false leaves the student alone (a recipe enables it for its recovery phase only).
    """

    def __init__(self, neurons: float | None = 0.5, params: int | None = None, importance: str = "activation",
                 calibration_batches: int = 32, calibration_seed: int = 0, enabled: bool = True) -> None:
        self.target = FFNTarget(neurons=neurons, params=params)
        self.target.check()
        if importance not in IMPORTANCES:
            raise ConfigError(f"{KEY}.importance={importance!r} is not one of {', '.join(IMPORTANCES)}.")
        n = calibration_batches
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ConfigError(f"{KEY}.calibration_batches={n!r} must be a positive number of batches.")
        self.importance, self.batches, self.seed, self.enabled = importance, n, calibration_seed, enabled
        self.summary: dict | None = None

    def check_student(self, student: nn.Module) -> int:
        """The model-dependent checks (they work on a meta-device student); returns the FFN width kept."""
        return self.target.width(student)

    def calibration(self, trainer: L.Trainer) -> list:
        """The first batches of the fit's own training loader, shuffled in a forked RNG (the run's draws stay)."""
        return seeded_batches(trainer.datamodule.train_dataloader(), self.batches, self.seed)

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or not self.enabled:
            return
        student = getattr(pl_module, "student", pl_module)
        self.check_student(student)  # a bad target stops before any calibration batch is drawn
        if trainer.is_global_zero:
            save_before(student, Path(trainer.default_root_dir) / BEFORE)
        self.summary = prune_ffn(student, self.calibration(trainer), self.target, self.importance)
        s = self.summary
        log.info("Neuron pruning (%s): FFN %d -> %d neurons in each of %d layers; parameters %d -> %d",
                 self.importance, s["width_before"], s["width_after"], s["layers"], s["params_before"],
                 s["params_after"])
        if trainer.is_global_zero:
            out = Path(trainer.default_root_dir)
            out.mkdir(parents=True, exist_ok=True)
            record = {**s, "target": asdict(self.target)}
            (out / "neuron_pruning.json").write_text(json.dumps(record), encoding="utf-8")
