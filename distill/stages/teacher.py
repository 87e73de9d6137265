"""Stage ``teacher``: fine-tune the teacher on the task once and cache it (also the first step of ``distill``)."""

from __future__ import annotations

import functools
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from distill.blocks import build_datamodule, build_trainer, save_model
from distill.console import seed_everything
from distill.distributed import barrier, is_global_zero
from distill.models.teacher import cache_key, load_classifier, load_config, publish_dir
from distill.module import TaskModule
from distill.optim import linear_warmup_decay
from distill.report.evaluate import evaluate_classifier as evaluate

log = logging.getLogger("distill")


def prepare_teacher(cfg: DictConfig, dm) -> tuple[str, dict[str, Any]]:
    """Path of the teacher to distil from: as given, or fine-tuned on the task once and cached.

    The cache key is (model, task, fine-tuning settings, seed, data subset); the entry appears only when
    complete (written in a temporary folder, then renamed).
    """
    tcfg = cfg.teacher
    name = str(tcfg.name_or_path)
    if not tcfg.finetune:
        return name, {}
    args = OmegaConf.to_container(tcfg.finetune_args, resolve=True)
    settings = {"finetune": args, "seed": cfg.seed, "source": dm.source, "max_length": dm.max_length,
                "max_train_samples": dm.max_train_samples, "subset_seed": dm.subset_seed}
    if dm.sampler_key() is not None:  # only when not torch's shuffle, so earlier cache entries stay valid
        settings["sampler"] = dm.sampler_key()
    final = Path(cfg.paths.cache_dir) / "teachers" / cache_key(name, dm.spec, settings)
    if (final / "config.json").is_file():
        log.info("Reusing the fine-tuned teacher cached at %s", final)
        return str(final), json.loads((final / "distill_teacher.json").read_text())
    log.info("Fine-tuning teacher %s on %s (cached afterwards at %s)", name, dm.spec.name, final)
    seed_everything(cfg.seed)
    model = load_classifier(name, dm.spec)
    module = TaskModule(
        model, dm.spec,
        optimizer=lambda p: torch.optim.AdamW(p, lr=args["lr"], weight_decay=args["weight_decay"]),
        scheduler=functools.partial(linear_warmup_decay, warmup_ratio=args["warmup_ratio"]),
    )
    with tempfile.TemporaryDirectory(dir=Path(cfg.paths.cache_dir)) as work:
        trainer = build_trainer(cfg, Path(work), with_callbacks=False, max_epochs=args["max_epochs"],
                                max_steps=args["max_steps"], enable_checkpointing=False)
        trainer.fit(module, dm)
        # DDP: every rank scores the whole dev set (torchmetrics gathers their identical counts, which leaves
        # every metric unchanged, and needs all ranks in that collective); rank 0 alone caches the teacher
        metrics = evaluate(model, dm.val_dataloader(), dm.spec)
        if is_global_zero():
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=final.parent))
            save_model(model, dm.tokenizer, tmp)
            info = {"base": name, "task": dm.spec.name, "settings": settings, "dev_metrics": metrics}
            (tmp / "distill_teacher.json").write_text(json.dumps(info, indent=2, default=str))
            publish_dir(tmp, final)
        barrier()  # the other ranks load the cached teacher next
    info = json.loads((final / "distill_teacher.json").read_text())
    log.info("Teacher dev metrics: %s", ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
    return str(final), info


def run(cfg: DictConfig, output_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``stage=teacher``: fine-tune (or reuse) the teacher only."""
    load_config(str(cfg.teacher.name_or_path))
    dm = build_datamodule(cfg, str(cfg.teacher.name_or_path))
    teacher_path, info = prepare_teacher(cfg, dm)
    metrics = {"teacher_" + k: v for k, v in info.get("dev_metrics", {}).items()}
    return metrics, {"teacher_path": teacher_path}
