"""Magnitude pruning during distillation: unstructured (or ``N:M``) sparsity reached on the cubic schedule of
Zhu & Gupta.

``cubic_sparsity`` is the schedule; :class:`MagnitudePruning` is a Lightning callback that, every
``frequency`` steps between ``start_fraction`` and ``end_fraction`` of training, zeroes the smallest-magnitude
weights of the student's linear layers (globally or per layer) with ``torch.nn.utils.prune`` and keeps them
at zero after every optimizer step. The mask is folded into the weights right away (``prune.remove``), so the
state dict stays a plain Hugging Face one at every checkpoint and the saved student needs nothing special.
``pattern=2:4`` keeps the 2 largest of every 4 consecutive weights of a row instead (:mod:`distill.prune.patterns`).
``criterion=wanda`` ranks by magnitude times the root-mean-square of the input feature each weight multiplies,
recorded on the training batches since the last mask update (:mod:`distill.prune.input_stats`);
``reconstruct=true`` refits the weights each update keeps to the layer's dense outputs on those batches
(ridge least squares, :mod:`distill.prune.reconstruct`).
Zeros do not make dense CPU kernels faster; they make a compressed export smaller (the report's
``student_sparse`` row, :mod:`distill.prune.sparse_export`).
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.nn.utils import prune

from distill.checkpoint import restart_ranking
from distill.errors import ConfigError
from distill.prune.input_stats import InputStats
from distill.prune.patterns import check_divisible, parse_pattern, semi_structured_masks
from distill.prune.reconstruct import refit_kept_weights
from distill.prune.sparsity import named_prunable_linears, prunable_linears, sparsity

KEY = "callbacks.magnitude_pruning"

__all__ = ["KEY", "MagnitudePruning", "cubic_sparsity", "prunable_linears", "sparsity"]


def cubic_sparsity(step: int, total: int, final: float, initial: float = 0.0, start: float = 0.0,
                   end: float = 0.8) -> float:
    """Zhu & Gupta (2017): ``s_f + (s_i - s_f) (1 - p)^3`` with ``p`` the progress from ``start`` to ``end``
    (fractions of ``total`` steps); ``initial`` before, ``final`` after."""
    begin, finish = start * total, max(end * total, start * total + 1)
    progress = min(max((step - begin) / (finish - begin), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def _is_fraction(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float))


class MagnitudePruning(L.Callback):
    """Gradual magnitude pruning of ``pl_module.student`` (see the module docstring).

    Args:
        sparsity: the final fraction of zero weights, in [0, 1) (with ``pattern=N:M``: ``1 - N/M`` to 3 decimals).
        scope: ``global`` (one threshold over all pruned layers) or ``layer`` (the same fraction per layer).
        start_fraction / end_fraction: where in training the schedule starts and reaches ``sparsity``.
        frequency: steps between mask updates.
        pattern: ``unstructured`` or ``N:M`` (``2:4``: in each group of 4 consecutive weights the 2 largest stay).
        criterion: ``magnitude`` (``|W|``) or ``wanda`` (``|W|`` times the input feature's root-mean-square).
        reconstruct: refit the kept weights of each pruned layer to its dense outputs on the training batches
            seen since the last update (``damping``: the ridge term, relative to the inputs' mean square).
    """

    SCOPES = ("global", "layer")
    CRITERIA = ("magnitude", "wanda")

    def __init__(self, sparsity: float = 0.5, scope: str = "global", start_fraction: float = 0.0,
                 end_fraction: float = 0.8, frequency: int = 10, pattern: str = "unstructured",
                 criterion: str = "magnitude", reconstruct: bool = False, damping: float = 0.01) -> None:
        if not _is_fraction(sparsity) or not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"{KEY}.sparsity={sparsity!r} must be a fraction of zero weights in [0, 1).")
        if scope not in self.SCOPES:
            raise ConfigError(f"{KEY}.scope={scope!r} is not one of {', '.join(self.SCOPES)}.")
        if criterion not in self.CRITERIA:
            raise ConfigError(f"{KEY}.criterion={criterion!r} is not one of {', '.join(self.CRITERIA)}.")
        if not isinstance(reconstruct, bool):
            raise ConfigError(f"{KEY}.reconstruct={reconstruct!r} must be true or false.")
        if not _is_fraction(damping) or damping <= 0:
            raise ConfigError(f"{KEY}.damping={damping!r} must be a positive number (the ridge term, relative to "
                              "the inputs' mean square).")
        if not (_is_fraction(start_fraction) and _is_fraction(end_fraction)
                and 0.0 <= start_fraction < end_fraction <= 1.0):
            raise ConfigError(f"{KEY}.start_fraction={start_fraction} and {KEY}.end_fraction={end_fraction} must "
                              "satisfy 0 <= start < end <= 1.")
        if isinstance(frequency, bool) or not isinstance(frequency, int) or frequency < 1:
            raise ConfigError(f"{KEY}.frequency={frequency!r} must be a positive number of steps.")
        self.n_m = parse_pattern(pattern, f"{KEY}.pattern")
        if self.n_m is not None:
            n, m = self.n_m
            if abs(sparsity - (1 - n / m)) > 5e-4:
                raise ConfigError(f"{KEY}.sparsity={sparsity} does not match pattern={pattern}, which keeps {n} of "
                                  f"every {m} weights; set sparsity={1 - n / m:.3g}.")
            sparsity = 1 - n / m  # exactly
        self.target, self.scope, self.start, self.end, self.frequency = (
            sparsity, scope, start_fraction, end_fraction, frequency)
        self.pattern, self.criterion = pattern, criterion
        self.reconstruct, self.damping = reconstruct, damping
        self.stats = InputStats(gram=reconstruct) if criterion == "wanda" or reconstruct else None
        self.masks: dict[nn.Linear, torch.Tensor] = {}
        self.current = 0.0

    @staticmethod
    def _model(pl_module: L.LightningModule) -> nn.Module:
        return getattr(pl_module, "student", pl_module)

    def check_student(self, model: nn.Module) -> None:
        """The model-dependent check: an ``N:M`` pattern needs every pruned layer's inputs in whole groups."""
        if self.n_m is not None:
            shapes = {name: tuple(m.weight.shape) for name, m in named_prunable_linears(model)}
            check_divisible(shapes, self.n_m[1], f"{KEY}.pattern={self.pattern}")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.check_student(self._model(pl_module))  # before the first step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        modules = prunable_linears(self._model(pl_module))
        if self.current > 0 and not self.masks:  # resumed: the checkpoint's zeros are the masks
            self.masks = {m: m.weight.detach().ne(0).to(m.weight.dtype) for m in modules}
        if self.stats is not None and self.current < self.target:
            self.stats.attach(modules)

    def state_dict(self) -> dict:
        return {"current": self.current}

    def load_state_dict(self, state_dict: dict) -> None:
        self.current = float(state_dict.get("current", 0.0))

    @torch.no_grad()
    def prune_to(self, model: nn.Module, amount: float) -> None:
        """Zero the ``amount`` lowest-scoring weights (global or per layer, unstructured or among the ``N:M``
        candidates); remember the masks. Scores: ``|W|``, or for ``wanda`` ``|W|`` times the input features'
        root-mean-square since the last update (pruned weights score 0, so they stay pruned); with
        ``reconstruct`` the kept weights are then refitted to the dense outputs on those inputs."""
        modules = prunable_linears(model)
        if self.criterion == "wanda":
            scores = self.stats.scores(modules)
        else:
            scores = [m.weight.detach().abs() for m in modules]
        dense = [m.weight.detach().clone() for m in modules] if self.reconstruct else None
        if self.n_m is not None:
            self.check_student(model)
            masks = semi_structured_masks(scores, amount, *self.n_m, self.scope)
            for m, mask in zip(modules, masks, strict=True):
                prune.custom_from_mask(m, "weight", mask)
        elif self.scope == "global":
            prune.global_unstructured([(m, "weight") for m in modules], prune.L1Unstructured, amount=amount,
                                      importance_scores=dict(zip(((m, "weight") for m in modules), scores)))
        else:
            for m, score in zip(modules, scores, strict=True):
                prune.l1_unstructured(m, "weight", amount=amount, importance_scores=score)
        for i, m in enumerate(modules):
            self.masks[m] = m.weight_mask.detach().clone()
            prune.remove(m, "weight")  # fold the mask in: a plain parameter, a plain state dict
            gram = self.stats.gram_matrix(m) if dense is not None else None
            if gram is not None:  # a layer that saw no training input yet keeps its values
                m.weight.copy_(refit_kept_weights(dense[i], self.masks[m], gram, self.damping))
        if self.stats is not None:
            self.stats.reset()
        self.current = amount

    def _apply(self) -> None:
        with torch.no_grad():
            for m, mask in self.masks.items():
                m.weight.mul_(mask)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx) -> None:
        step, total = trainer.global_step, max(1, trainer.estimated_stepping_batches)
        amount = cubic_sparsity(step, total, self.target, start=self.start, end=self.end)
        if amount > self.current and (step % self.frequency == 0 or amount >= self.target):
            self.prune_to(self._model(pl_module), amount)
            if self.current >= self.target:
                restart_ranking(trainer)  # checkpoints ranked below the target sparsity stop competing
                if self.stats is not None:  # no update left: stop recording (a Gram matrix a layer a step)
                    self.stats.detach()
        else:
            self._apply()
        pl_module.log("prune/sparsity", self.current)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.target > self.current:  # a short run that never reached the end of the schedule
            self.prune_to(self._model(pl_module), self.target)
            restart_ranking(trainer)  # no checkpoint holds this sparsity: the fit ends on these weights
        self._apply()
        if self.stats is not None:
            self.stats.detach()
