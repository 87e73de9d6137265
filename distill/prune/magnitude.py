"""Magnitude pruning during distillation: unstructured sparsity reached on the cubic schedule of Zhu & Gupta.

``cubic_sparsity`` is the schedule; :class:`MagnitudePruning` is a Lightning callback that, every
``frequency`` steps between ``start_fraction`` and ``end_fraction`` of training, zeroes the smallest-magnitude
weights of the student's linear layers (globally or per layer) with ``torch.nn.utils.prune`` and keeps them
at zero after every optimizer step. The mask is folded into the weights right away (``prune.remove``), so the
state dict stays a plain Hugging Face one at every checkpoint and the saved student needs nothing special.
Unstructured zeros do not make dense CPU kernels faster; they make a compressed export smaller.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn
from torch.nn.utils import prune

from distill.errors import ConfigError


def cubic_sparsity(step: int, total: int, final: float, initial: float = 0.0, start: float = 0.0,
                   end: float = 0.8) -> float:
    """Zhu & Gupta (2017): ``s_f + (s_i - s_f) (1 - p)^3`` with ``p`` the progress from ``start`` to ``end``
    (fractions of ``total`` steps); ``initial`` before, ``final`` after."""
    begin, finish = start * total, max(end * total, start * total + 1)
    progress = min(max((step - begin) / (finish - begin), 0.0), 1.0)
    return final + (initial - final) * (1.0 - progress) ** 3


def prunable_linears(model: nn.Module, skip: tuple[str, ...] = ("classifier", "pooler")) -> list[nn.Linear]:
    """The linear layers of ``model`` whose weights are pruned (not the task head or the pooler)."""
    return [m for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and not any(part in skip for part in name.split("."))]


def sparsity(modules: list[nn.Linear]) -> float:
    """Fraction of exact zeros in the weights of ``modules``."""
    zeros = sum(int((m.weight == 0).sum()) for m in modules)
    return zeros / max(1, sum(m.weight.numel() for m in modules))


class MagnitudePruning(L.Callback):
    """Gradual unstructured magnitude pruning of ``pl_module.student`` (see the module docstring).

    Args:
        sparsity: the final fraction of zero weights, in [0, 1).
        scope: ``global`` (one threshold over all pruned layers) or ``layer`` (the same fraction per layer).
        start_fraction / end_fraction: where in training the schedule starts and reaches ``sparsity``.
        frequency: steps between mask updates.
    """

    SCOPES = ("global", "layer")

    def __init__(self, sparsity: float = 0.5, scope: str = "global", start_fraction: float = 0.0,
                 end_fraction: float = 0.8, frequency: int = 10) -> None:
        if not 0.0 <= sparsity < 1.0:
            raise ConfigError(f"prune.sparsity={sparsity!r} must be in [0, 1).")
        if scope not in self.SCOPES:
            raise ConfigError(f"prune.scope={scope!r} is not one of {', '.join(self.SCOPES)}.")
        if not 0.0 <= start_fraction < end_fraction <= 1.0:
            raise ConfigError(f"prune.start_fraction={start_fraction} and prune.end_fraction={end_fraction} must "
                              "satisfy 0 <= start < end <= 1.")
        if frequency < 1:
            raise ConfigError(f"prune.frequency={frequency} must be a positive number of steps.")
        self.target, self.scope, self.start, self.end, self.frequency = (
            sparsity, scope, start_fraction, end_fraction, frequency)
        self.masks: dict[nn.Linear, torch.Tensor] = {}
        self.current = 0.0

    @staticmethod
    def _model(pl_module: L.LightningModule) -> nn.Module:
        return getattr(pl_module, "student", pl_module)

    @torch.no_grad()
    def prune_to(self, model: nn.Module, amount: float) -> None:
        """Zero the ``amount`` smallest-magnitude weights (global or per layer); remember the masks."""
        modules = prunable_linears(model)
        if self.scope == "global":
            prune.global_unstructured([(m, "weight") for m in modules], prune.L1Unstructured, amount=amount)
        else:
            for m in modules:
                prune.l1_unstructured(m, "weight", amount=amount)
        for m in modules:
            self.masks[m] = m.weight_mask.detach().clone()
            prune.remove(m, "weight")  # fold the mask in: a plain parameter, a plain state dict
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
        else:
            self._apply()
        pl_module.log("prune/sparsity", self.current)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.target > self.current:  # a short run that never reached the end of the schedule
            self.prune_to(self._model(pl_module), self.target)
        self._apply()
