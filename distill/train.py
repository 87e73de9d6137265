"""``run(cfg)``: validate, build, fine-tune the teacher if asked, distil, evaluate, report.

Each stage returns ``(metrics, objects)`` like lightning-hydra-template's ``train``; the Hydra entry
point (``train.py`` at the repo root) only calls :func:`run`.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf
from transformers import AutoTokenizer

from distill.augment import augment_train_set
from distill.checkpoint import AtomicCheckpointIO
from distill.config import build, check_pair, check_tokenizers, validate
from distill.data.glue import GLUEDataModule
from distill.general import run_general, with_general_student
from distill.loggers import log_config
from distill.models.teacher import cache_key, load_classifier, load_config, publish_dir
from distill.module import TaskModule
from distill.optim import linear_warmup_decay
from distill.phases import fit_phases, plan_phases
from distill.report import format_table, measure_speed, model_entry, with_ratios, write_report

log = logging.getLogger("distill")


# ---- building blocks ---------------------------------------------------------------------------
def build_datamodule(cfg: DictConfig, tokenizer: str) -> GLUEDataModule:
    dm = build(cfg.data, "data", tokenizer=tokenizer)
    dm.check_files()
    return dm


def build_trainer(cfg: DictConfig, output_dir: Path, *, with_callbacks: bool = True, with_quant: bool = True,
                  **overrides: Any) -> L.Trainer:
    """Lightning Trainer from ``cfg.trainer`` with the configured callbacks and loggers and atomic checkpoints.

    ``with_quant=False`` leaves out the ``quant.callback`` (QAT): multi-phase runs train with it in their
    final phase only, where the shipped student's weights are settled.
    """
    callbacks = [build(node, f"callbacks.{name}") for name, node in (cfg.callbacks or {}).items() if node] if with_callbacks else []
    quant_cb = cfg.get("quant", {}).get("callback") if with_callbacks and with_quant else None
    if quant_cb:
        callbacks.append(build(quant_cb, "quant.callback"))
    loggers = [build(node, f"logger.{name}") for name, node in (cfg.logger or {}).items() if node] if with_callbacks else []
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


def evaluate(model, dm: GLUEDataModule, trainer_cfg: DictConfig, split: str = "dev") -> dict[str, float]:
    """Dev (or train) metrics of an HF classifier, keyed by GLUE metric name."""
    module = TaskModule(model, dm.spec, optimizer=torch.optim.AdamW)
    trainer = L.Trainer(accelerator=trainer_cfg.accelerator, devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    dm.setup("fit" if split == "train" else "validate")
    loader = dm._loader(split, False, dm.eval_batch_size)
    (out,) = trainer.validate(module, dataloaders=loader, verbose=False)
    return {k.removeprefix("val/"): float(v) for k, v in out.items() if k != "val/score"}


def _save_model(model, tokenizer, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


# ---- stages ------------------------------------------------------------------------------------
def prepare_teacher(cfg: DictConfig, dm: GLUEDataModule) -> tuple[str, dict[str, Any]]:
    """Path of the teacher to distil from: as given, or fine-tuned on the task once and cached."""
    tcfg = cfg.teacher
    name = str(tcfg.name_or_path)
    if not tcfg.finetune:
        return name, {}
    args = OmegaConf.to_container(tcfg.finetune_args, resolve=True)
    settings = {"finetune": args, "seed": cfg.seed, "source": dm.source, "max_length": dm.max_length,
                "max_train_samples": dm.max_train_samples, "subset_seed": dm.subset_seed}
    final = Path(cfg.paths.cache_dir) / "teachers" / cache_key(name, dm.spec, settings)
    if (final / "config.json").is_file():
        log.info("Reusing the fine-tuned teacher cached at %s", final)
        return str(final), json.loads((final / "distill_teacher.json").read_text())
    log.info("Fine-tuning teacher %s on %s (cached afterwards at %s)", name, dm.spec.name, final)
    L.seed_everything(cfg.seed, workers=True)
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
        metrics = evaluate(model, dm, cfg.trainer)
        tmp = Path(tempfile.mkdtemp(dir=final.parent.parent if final.parent.exists() else cfg.paths.cache_dir))
        _save_model(model, dm.tokenizer, tmp)
        info = {"base": name, "task": dm.spec.name, "settings": settings, "dev_metrics": metrics}
        (tmp / "distill_teacher.json").write_text(json.dumps(info, indent=2, default=str))
        publish_dir(tmp, final)
    log.info("Teacher dev metrics: %s", metrics)
    return str(final), info


def build_objective(cfg: DictConfig, student, teacher):
    """The loss: intermediate terms get both model configs (for projections and layer maps)."""
    terms = {
        name: build(node, f"loss.terms.{name}", student_config=student.config, teacher_config=teacher.config)
        for name, node in (cfg.loss.get("terms") or {}).items()
    }
    return build(cfg.loss, "loss", terms=terms)


def run_distill(cfg: DictConfig, output_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    teacher_name = str(cfg.teacher.name_or_path)
    load_config(teacher_name)
    phases = plan_phases(cfg, output_dir)  # every phase's loss checked against the models' configs first
    dm = build_datamodule(cfg, teacher_name)
    if cfg.general.before_distill and cfg.stage == "distill":  # TinyBERT / DistilBERT: start from a general student
        cfg = with_general_student(cfg, output_dir)
    teacher_path, teacher_info = prepare_teacher(cfg, dm)
    if cfg.stage == "teacher":
        metrics = {"teacher_" + k: v for k, v in teacher_info.get("dev_metrics", {}).items()}
        return metrics, {"teacher_path": teacher_path}

    L.seed_everything(cfg.seed, workers=True)
    teacher = load_classifier(teacher_path, dm.spec)  # switched to eager attention by phases that need it
    student = build(cfg.student, "student", teacher=teacher)
    check_pair(student, teacher, dm.tokenizer)
    if cfg.augment.enabled:
        augment_train_set(cfg, dm, teacher, teacher_path)
    fit_phases(cfg, phases, student, teacher, dm, output_dir)

    trained = student
    if cfg.quant.mode != "none":
        from distill.quant import is_qat_prepared, strip_fake_quant

        if is_qat_prepared(student):  # the shipped fp32 student is the QAT-trained weights without fake quant
            student = strip_fake_quant(copy.deepcopy(student))
    student_dir = _save_model(student, dm.tokenizer, output_dir / "student")
    metrics, objects = report(cfg, dm, output_dir,
                              [("teacher", teacher, Path(teacher_path)), ("student", student, student_dir)])
    if cfg.quant.mode != "none":
        metrics.update(quant_report(cfg, dm, output_dir, teacher, trained, objects["rows"]))
    return metrics, objects


def quant_report(cfg: DictConfig, dm: GLUEDataModule, output_dir: Path, teacher, trained, rows) -> dict[str, float]:
    """int8 variants (QAT-converted and PTQ), ONNX int8 and the compression report (json, md, png)."""
    from distill.compression import build_compression_report
    from distill.quant import convert_qat, is_qat_prepared

    qat = convert_qat(trained) if cfg.quant.mode == "qat" and is_qat_prepared(trained) else None
    by_name = {r["model"]: r for r in rows}
    result = build_compression_report(
        output_dir, teacher, trained, dm.spec, dm.val_dataloader(), teacher_dir=by_name["teacher"]["path"],
        student_dir=by_name["student"]["path"], qat_int8=qat, embeddings=cfg.quant.embeddings,
        tokenizer=dm.tokenizer, measure_speed=cfg.measure_speed, **cfg.speed,
        metrics={"teacher": by_name["teacher"]["metrics"], "student_fp32": by_name["student"]["metrics"]},
    )
    return {f"{r['model']}_score": r["score"] for r in result["models"] if r.get("score") is not None}


def report(cfg: DictConfig, dm: GLUEDataModule, output_dir: Path, models: list) -> tuple[dict, dict]:
    """Score, size and time each model; write ``report.json``; print the table; return flat metrics."""
    rows = []
    for name, model, saved in models:
        metrics = evaluate(model, dm, cfg.trainer, cfg.eval.split)
        speed = measure_speed(model, model.config.vocab_size, **cfg.speed) if cfg.measure_speed else None
        rows.append(model_entry(name, model, saved, metrics, dm.spec.main_metric, speed))
    rows = with_ratios(rows)
    extra = {"task": dm.spec.name, "split": cfg.eval.split, "eval_examples": len(dm.datasets[cfg.eval.split]),
             "train_examples": len(dm.datasets["train"]) if "train" in dm.datasets else None}
    write_report(output_dir / "report.json", rows, extra)
    print(f"\n{dm.spec.name} {cfg.eval.split} ({extra['eval_examples']} examples)\n{format_table(rows)}\n")
    flat = {}
    for row in rows:
        flat[f"{row['model']}_score"] = row["score"]
        flat.update({f"{row['model']}_{k}": v for k, v in row["metrics"].items()})
        if "retention" in row:
            flat[f"{row['model']}_retention"] = row["retention"]
    return flat, {"rows": rows}


def run_eval(cfg: DictConfig, output_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Score a saved model (and optionally the teacher it came from) on a split; same report."""
    path = str(cfg.eval.model_path)
    load_config(path)
    dm = build_datamodule(cfg, path)
    model = load_classifier(path, dm.spec)
    if Path(path).is_dir() and (Path(path) / "tokenizer_config.json").is_file() and cfg.eval.teacher_path:
        check_tokenizers(AutoTokenizer.from_pretrained(path), AutoTokenizer.from_pretrained(str(cfg.eval.teacher_path)))
    models = [("student", model, Path(path))]
    if cfg.eval.teacher_path:
        models.insert(0, ("teacher", load_classifier(str(cfg.eval.teacher_path), dm.spec), Path(cfg.eval.teacher_path)))
    return report(cfg, dm, output_dir, models)


STAGE_RUNNERS = {"teacher": run_distill, "distill": run_distill, "eval": run_eval, "general": run_general}


def run(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate ``cfg`` and run its stage; returns ``(metrics, objects)``."""
    validate(cfg)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    Path(cfg.paths.cache_dir).mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    return STAGE_RUNNERS[cfg.stage](cfg, output_dir)
