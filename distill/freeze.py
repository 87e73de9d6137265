"""Freezing the student's lower layers for one phase: MobileBERT's progressive knowledge transfer.

MobileBERT (Sun et al. 2020) transfers the teacher's feature maps and attention one layer at a time: while
layer ``k`` is trained, the layers below it are frozen. :class:`FreezeBelow` is that rule as a Lightning callback,
put in a phase's ``callbacks:`` node (``distill/phases/plan.py`` merges it over the run's). It sets
``requires_grad`` on *every* student parameter at the phase's ``setup`` — False for the embeddings (optionally)
and encoder layers ``1 .. layer-1``, True for all the rest — so a later phase with ``layer: 1, embeddings:
false`` unfreezes everything again. ``setup`` runs before ``configure_optimizers``, which keeps only parameters
with ``requires_grad``, so frozen weights are not even in the optimizer (no weight decay moves them).
"""

from __future__ import annotations

import lightning as L
from torch import nn

from distill.errors import ConfigError


def encoder_parts(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """``(embeddings, layers)`` of a BERT-family model (BERT, MobileBERT, RoBERTa...), layers in forward order."""
    base = getattr(model, "base_model", model)
    embeddings = getattr(base, "embeddings", None)
    layers = getattr(getattr(base, "encoder", None), "layer", None)
    if embeddings is None or not isinstance(layers, nn.ModuleList):
        raise ConfigError(f"FreezeBelow needs a student with embeddings and encoder.layer ({type(model).__name__} "
                          "has not, e.g. ALBERT's shared layers); remove callbacks.freeze or use another student.")
    return embeddings, layers


def freeze_below(model: nn.Module, layer: int, embeddings: bool = True) -> list[str]:
    """Freeze ``model``'s embeddings (if ``embeddings``) and encoder layers ``1 .. layer-1``; unfreeze the rest.

    Layers are 1-based like ``hidden_states``. Returns the names of the frozen parameters.
    """
    emb, layers = encoder_parts(model)
    if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= len(layers):
        raise ConfigError(f"callbacks.freeze.layer={layer!r} must be a layer of the student, 1..{len(layers)} "
                          "(the layer trained; those below it are frozen).")
    frozen_modules = ([emb] if embeddings else []) + list(layers[: layer - 1])
    frozen = {id(p) for m in frozen_modules for p in m.parameters()}
    names = []
    for name, param in model.named_parameters():
        param.requires_grad_(id(param) not in frozen)
        if id(param) in frozen:
            names.append(name)
    return names


class FreezeBelow(L.Callback):
    """At the start of a fit, freeze the student below ``layer`` (see :func:`freeze_below`); log what it did."""

    def __init__(self, layer: int = 1, embeddings: bool = True) -> None:
        if not isinstance(embeddings, bool):
            raise ConfigError(f"callbacks.freeze.embeddings={embeddings!r} must be true or false.")
        self.layer = layer
        self.embeddings = embeddings
        self.frozen: list[str] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        student = getattr(pl_module, "student", None)
        if student is None:
            raise ConfigError("callbacks.freeze needs a distillation module with a student.")
        self.frozen = freeze_below(student, self.layer, self.embeddings)
