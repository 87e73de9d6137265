"""Lightning callback that runs quantization-aware training on the student."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.utilities import rank_zero_info

from distill.errors import ConfigError
from distill.quant.core import fake_quant_enabled, prepare_qat, set_fake_quant_enabled


class QATCallback(pl.Callback):
    """Fake-quantize the student to int8 from ``start_fraction`` of training onwards.

    At ``setup`` (before Lightning builds the optimizers) the student — ``pl_module.<attr>``, a Hugging Face
    model — gets torchao fake-quantized layers with fake quant off. torchao's prepare reuses the original
    ``nn.Parameter`` objects, so the optimizer trains the same tensors whenever it is built. Fake quant is
    switched on at the first batch with ``trainer.global_step >= start_fraction *
    trainer.estimated_stepping_batches`` (0.0: from the first step). After training, convert the student
    with :func:`distill.quant.convert_qat`.
    """

    def __init__(self, start_fraction: float = 0.0, embeddings: bool = False,
                 layers: Iterable[str] | None = None, attr: str = "student") -> None:
        if not 0.0 <= float(start_fraction) <= 1.0:
            raise ConfigError(f"quant.start_fraction={start_fraction} must be between 0 and 1.")
        self.start_fraction = float(start_fraction)
        self.embeddings = bool(embeddings)
        self.layers = tuple(layers) if layers is not None else None
        self.attr = attr
        self.start_step: int | None = None
        self.enabled_at_step: int | None = None

    def _student(self, pl_module: pl.LightningModule):
        student = getattr(pl_module, self.attr, None)
        if student is None:
            raise ConfigError(f"QATCallback needs the LightningModule attribute {self.attr!r} (the student model).")
        return student

    def _prepare(self, pl_module: pl.LightningModule) -> None:
        prepare_qat(self._student(pl_module), layers=self.layers, embeddings=self.embeddings,
                    enabled=self.enabled_at_step is not None)

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._prepare(pl_module)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._prepare(pl_module)  # idempotent; covers modules whose student is built in configure_model

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        student = self._student(pl_module)
        if fake_quant_enabled(student):
            return
        if self.start_step is None:
            total = trainer.estimated_stepping_batches
            total = total if total not in (None, float("inf")) else 0
            self.start_step = int(self.start_fraction * total)
        if trainer.global_step >= self.start_step:
            set_fake_quant_enabled(student, True)
            self.enabled_at_step = trainer.global_step
            rank_zero_info(f"QAT: int8 fake quantization on from step {trainer.global_step}.")

    def state_dict(self) -> dict[str, Any]:
        return {"start_step": self.start_step, "enabled_at_step": self.enabled_at_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.start_step = state_dict.get("start_step")
        self.enabled_at_step = state_dict.get("enabled_at_step")
