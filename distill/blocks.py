"""Building blocks every stage and phase uses: data module, trainer, objective, saving.

Everything here takes config nodes and live objects and returns live objects; nothing here knows about
stages or phases (they import this module, never the other way round).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from distill.checkpoint import AtomicCheckpointIO
from distill.config import build
from distill.data.glue import GLUEDataModule
from distill.loggers import log_config


def build_datamodule(cfg: DictConfig, tokenizer: str) -> GLUEDataModule:
    """The task's data module (``cfg.data``) with the teacher's tokenizer; its files checked now."""
    dm = build(cfg.data, "data", tokenizer=tokenizer)
    dm.check_files()
    return dm


def build_callbacks(cfg: DictConfig, with_quant: bool = True) -> list[L.Callback]:
    """``cfg.callbacks``, plus ``quant.callback`` (QAT) unless ``with_quant`` is False."""
    callbacks = [build(node, f"callbacks.{name}") for name, node in (cfg.callbacks or {}).items() if node]
    quant_cb = (cfg.get("quant") or {}).get("callback") if with_quant else None
    if quant_cb:
        callbacks.append(build(quant_cb, "quant.callback"))
    return callbacks


def build_loggers(cfg: DictConfig) -> list:
    return [build(node, f"logger.{name}") for name, node in (cfg.logger or {}).items() if node]


def build_trainer(cfg: DictConfig, output_dir: Path, *, with_callbacks: bool = True, with_quant: bool = True,
                  **overrides: Any) -> L.Trainer:
    """Lightning Trainer from ``cfg.trainer`` with the configured callbacks and loggers and atomic checkpoints.

    ``with_callbacks=False`` builds a bare trainer (no loggers, no callbacks but the progress bar: the teacher
    fine-tune); ``with_quant=False`` leaves out the ``quant.callback`` (QAT): multi-phase runs train with it in their
    final phase only, where the shipped student's weights are settled.
    """
    if with_callbacks:
        callbacks = build_callbacks(cfg, with_quant)
    else:  # progress still shows, in a log file too (distill.console.progress_bar)
        bar = (cfg.callbacks or {}).get("progress_bar")
        callbacks = [build(bar, "callbacks.progress_bar")] if bar else []
    loggers = build_loggers(cfg) if with_callbacks else []
    if not loggers:  # LearningRateMonitor refuses to run without a logger (logger=none)
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
    has_ckpt = any(isinstance(c, L.pytorch.callbacks.ModelCheckpoint) for c in callbacks)
    kwargs = dict(callbacks=callbacks, logger=loggers or False, plugins=[AtomicCheckpointIO()],
                  enable_checkpointing=has_ckpt, default_root_dir=str(output_dir))
    kwargs.update(overrides)
    trainer = build(cfg.trainer, "trainer", **kwargs)
    if loggers:
        log_config(trainer.loggers, cfg)
    return trainer


def build_objective(loss: DictConfig, student, teacher, key: str = "loss"):
    """The objective of ``loss`` for these models (or anything with a ``.config``): intermediate terms get
    both model configs (for projections and layer maps)."""
    terms = {
        name: build(node, f"{key}.terms.{name}", student_config=student.config, teacher_config=teacher.config)
        for name, node in (loss.get("terms") or {}).items()
    }
    return build(loss, key, terms=terms)


def save_model(model, tokenizer, out_dir: Path) -> Path:
    """``save_pretrained`` of the model and its tokenizer into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
