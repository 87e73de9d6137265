"""General (task-agnostic) distillation on unlabeled text: TinyBERT's first stage, or DistilBERT's MLM variant.

``stage=general`` distils the *pretrained* encoder ``general.teacher`` into the ``student`` preset on
unlabeled text and saves ``<run>/general_student/`` (Hugging Face format with the tokenizer), which
``student=pretrained student.name_or_path=<run>/general_student`` starts task distillation from.
``general.method``: ``intermediate`` (TinyBERT: the ``general.losses.intermediate`` objective, by
default attention scores + hidden states + embeddings) or ``mlm`` (DistilBERT: soft KL over the
vocabulary at masked positions + masked-LM CE + cosine; see :mod:`distill.mlm`).

Text: every line of ``general.text_files``, or by default every training sentence of the GLUE tasks
found in ``data.data_dir`` (both sentences of pair tasks), deduplicated, then a seeded random subset of
``general.max_samples``. With ``general.before_distill: true``, ``stage=distill`` runs this first,
caches the result under ``paths.cache_dir/general/<key>`` (key: teacher, student, loss, optimizer,
settings, ``general.seed`` and the texts themselves) and reuses it whenever the same settings come back.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.utils.data import DataLoader
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

from distill.checkpoint import find_resume_checkpoint
from distill.config import build, check_pair
from distill.data.tasks import TASKS, get_task
from distill.data.tsv import read_glue_tsv
from distill.errors import ConfigError, DataError
from distill.models.teacher import load_config, publish_dir
from distill.module import DistillationModule
from distill.phases import check_attention

log = logging.getLogger("distill")

METHODS = ("intermediate", "mlm")


# ---- text --------------------------------------------------------------------------------------
def collect_texts(data_dir: str | Path | None, text_files=None, max_samples: int | None = None,
                  seed: int = 0) -> list[str]:
    """Unlabeled texts: lines of ``text_files`` or GLUE training sentences; deduplicated, optionally subsampled.

    Order is kept (first occurrence wins); the subset is a seeded random choice kept in that order.
    """
    texts: list[str] = []
    if text_files:
        for name in text_files:
            path = Path(str(name)).expanduser()
            if not path.is_file():
                raise DataError(f"general.text_files names {path}, which is not a file.")
            texts += path.read_text(encoding="utf-8").splitlines()
    else:
        if not data_dir:
            raise ConfigError("general distillation needs data.data_dir (GLUE folders) or general.text_files.")
        for spec in TASKS.values():
            path = Path(data_dir).expanduser() / spec.folder / "train.tsv"
            if path.is_file():
                columns = read_glue_tsv(path, spec)
                texts += columns["text_a"] + columns.get("text_b", [])
    unique = list(dict.fromkeys(t.strip() for t in texts if t.strip()))
    if not unique:
        where = f"general.text_files={list(text_files)}" if text_files else f"data.data_dir={str(data_dir)!r} (GLUE train.tsv files)"
        raise DataError(f"general distillation found no text in {where}.")
    if max_samples is not None:
        if max_samples < 1:
            raise ConfigError(f"general.max_samples={max_samples} must be a positive number or null for all.")
        if max_samples < len(unique):
            keep = sorted(random.Random(seed).sample(range(len(unique)), max_samples))
            unique = [unique[i] for i in keep]
    return unique


def general_texts(cfg: DictConfig) -> list[str]:
    g = cfg.general
    return collect_texts(cfg.data.get("data_dir"), g.text_files, g.max_samples, general_seed(cfg))


def general_seed(cfg: DictConfig) -> int:
    """``general.seed`` (the text subset, the student's init, the batch order); unset: the run's ``seed``.

    Set apart so that task runs with several seeds can start from one general student, as TinyBERT's
    task runs all start from its one released general model.
    """
    seed = cfg.general.get("seed")
    return cfg.seed if seed is None else seed


class TextDataModule(L.LightningDataModule):
    """Unlabeled texts tokenized once; batches padded to their longest text, masked when ``mask_prob`` is set.

    Batches: ``input_ids``/``attention_mask``/``token_type_ids`` (B, T) int64, plus ``mlm_labels`` (B, T)
    int64 and ``mlm_mask`` (B, T) bool with masking. No validation set.
    """

    def __init__(self, texts: list[str], tokenizer, max_length: int, batch_size: int,
                 mask_prob: float | None = None) -> None:
        super().__init__()
        self.texts, self.tokenizer = texts, tokenizer
        self.max_length, self.batch_size, self.mask_prob = max_length, batch_size, mask_prob
        self.dataset: list[dict[str, list[int]]] | None = None

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is None:
            enc = self.tokenizer(self.texts, truncation=True, max_length=self.max_length)
            self.dataset = [{k: enc[k][i] for k in enc} for i in range(len(self.texts))]

    def _collate(self, features: list[dict[str, list[int]]]):
        from distill.mlm import mask_batch

        batch = dict(DataCollatorWithPadding(self.tokenizer, return_tensors="pt")(features))
        return mask_batch(batch, self.tokenizer, self.mask_prob) if self.mask_prob else batch

    def train_dataloader(self) -> DataLoader:
        self.setup()
        return DataLoader(self.dataset, batch_size=self.batch_size, shuffle=True, collate_fn=self._collate)


# ---- training ----------------------------------------------------------------------------------
def _teacher_key(cfg: DictConfig) -> str:
    return "teacher.name_or_path" if str(cfg.general.teacher) == str(cfg.teacher.name_or_path) else "general.teacher"


def load_models(cfg: DictConfig):
    """``(student, teacher)`` for general distillation: classifiers, or masked-LM models for ``method=mlm``."""
    name = str(cfg.general.teacher)
    load_config(name)
    if cfg.general.method == "mlm":
        from distill.mlm import classifier_view, load_mlm_teacher, masked_lm_student

        teacher = load_mlm_teacher(name, key=_teacher_key(cfg))
        student = masked_lm_student(build(cfg.student, "student", teacher=classifier_view(teacher)), teacher)
    else:
        teacher = AutoModelForSequenceClassification.from_pretrained(name)  # the classifier head is unused
        student = build(cfg.student, "student", teacher=teacher)
    return student, teacher.eval()


def general_config(cfg: DictConfig, work_dir: Path) -> DictConfig:
    """The run config for the general fit: ``general.loss``, its epochs/steps, ``work_dir``, no validation."""
    g = cfg.general
    if g.method not in METHODS:
        raise ConfigError(f"general.method={g.method!r} is not allowed; use one of {', '.join(METHODS)}.")
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.optimizer = general_optimizer(cfg)
        out.loss = g.loss
        out.trainer.max_epochs, out.trainer.max_steps = g.max_epochs, g.max_steps
        out.paths.output_dir = str(work_dir)
        for node in (out.callbacks or {}).values():
            if node and str(node.get("_target_", "")).endswith("ModelCheckpoint"):
                node.monitor, node.save_top_k = None, 0  # nothing to validate: keep last.ckpt only
    return out


def train_general(cfg: DictConfig, work_dir: Path, texts: list[str]) -> dict[str, float]:
    """Fit the general student in ``work_dir`` (resuming its ``last.ckpt``) and save ``general_student/``."""
    from distill.train import build_objective, build_trainer  # distill.train imports this module

    g = cfg.general
    gcfg = general_config(cfg, work_dir)
    build(gcfg.loss, "general.loss", terms={}, weights={})
    L.seed_everything(general_seed(cfg), workers=True)
    student, teacher = load_models(cfg)
    tokenizer = AutoTokenizer.from_pretrained(str(g.teacher))
    check_pair(student, teacher, tokenizer)
    objective = build_objective(gcfg, student, teacher)
    check_attention(cfg, objective, "general.loss")
    if "attentions" in objective.requires:
        teacher.set_attn_implementation("eager")
        student.set_attn_implementation("eager")
    dm = TextDataModule(texts, tokenizer, g.max_length, g.batch_size, g.mask_prob if g.method == "mlm" else None)
    module = DistillationModule(
        student, teacher, get_task(cfg.data.task), objective=objective,
        optimizer=build(gcfg.optimizer, "optimizer"), scheduler=build(gcfg.scheduler, "scheduler"),
    )
    trainer = build_trainer(gcfg, work_dir)
    ckpt = find_resume_checkpoint("auto" if cfg.ckpt_path else None, work_dir, None)
    log.info("General distillation (%s) of %s on %d texts in %s%s", g.method, g.teacher, len(texts), work_dir,
             f", resuming {ckpt}" if ckpt else "")
    if len(texts) > 20000 and not torch.cuda.is_available():
        # measured: 97,617 texts x 1 epoch of the tiny student took 74 min on one CPU core (objectives.md)
        log.info("No GPU: for the tiny student this stage takes about %d min per epoch on one CPU core (once: cached; "
                 "a killed run resumes); general.max_samples=20000 distils on a seeded subset instead.",
                 round(len(texts) / 97617 * 74))
    trainer.fit(module, dm, ckpt_path=ckpt)
    out = work_dir / "general_student"
    (student if g.method == "mlm" else student.base_model).save_pretrained(out)  # no random classifier shipped
    tokenizer.save_pretrained(out)
    loss = trainer.callback_metrics.get("train/loss")
    metrics = {"general_loss": float(loss) if loss is not None else math.nan, "general_texts": len(texts)}
    info = {"method": g.method, "teacher": str(g.teacher), "global_step": trainer.global_step, **metrics}
    (out / "distill_general.json").write_text(json.dumps(info, indent=2))
    return metrics


def run_general(cfg: DictConfig, output_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``stage=general``: distil on unlabeled text and save ``<run>/general_student/``."""
    metrics = train_general(cfg, output_dir, general_texts(cfg))
    path = output_dir / "general_student"
    print(f"\ngeneral student ({cfg.general.method}, {metrics['general_texts']} texts, final loss "
          f"{metrics['general_loss']:.4f}) saved to {path}\n")
    return metrics, {"general_student": str(path)}


def cached_general_student(cfg: DictConfig, output_dir: Path) -> Path:
    """The general student for these settings: from ``paths.cache_dir/general/`` or trained in ``<run>/general``."""
    texts = general_texts(cfg)
    final = Path(cfg.paths.cache_dir) / "general" / general_key(cfg, texts)
    if (final / "config.json").is_file():
        log.info("Reusing the general student cached at %s", final)
        return final
    train_general(cfg, output_dir / "general", texts)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent))
    shutil.copytree(output_dir / "general" / "general_student", tmp, dirs_exist_ok=True)
    publish_dir(tmp, final)
    return final


def general_optimizer(cfg: DictConfig) -> DictConfig:
    """The run's ``optimizer``, with ``general.lr`` as its learning rate when that is set."""
    lr = cfg.general.get("lr")  # checked by distill.config.validate
    if lr is None:
        return cfg.optimizer
    return OmegaConf.merge(cfg.optimizer, {"lr": float(lr)})


def general_key(cfg: DictConfig, texts: list[str]) -> str:
    """Cache folder name: teacher stem, method and a hash of everything that shapes the general student."""
    g = cfg.general
    nodes = {"student": cfg.student, "optimizer": general_optimizer(cfg), "scheduler": cfg.scheduler}
    plain = {k: OmegaConf.to_container(node, resolve=True) for k, node in nodes.items()}
    settings = {k: g[k] for k in ("method", "max_length", "batch_size", "max_epochs", "max_steps", "mask_prob")}
    blob = json.dumps({"teacher": str(g.teacher), "loss": OmegaConf.to_container(g.loss, resolve=True),
                       "seed": general_seed(cfg), "texts": hashlib.sha1("\n".join(texts).encode()).hexdigest(),
                       **plain, **settings}, sort_keys=True, default=str)
    stem = Path(str(g.teacher).rstrip("/")).name
    stem = Path(str(g.teacher).rstrip("/")).parent.name if stem == "model" else stem
    return f"{stem}-{g.method}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


def with_general_student(cfg: DictConfig, output_dir: Path) -> DictConfig:
    """A copy of ``cfg`` whose student starts from the (cached) general student of its settings."""
    path = cached_general_student(cfg, output_dir)
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.student = OmegaConf.create({
            "_target_": "distill.models.student.pretrained_student", "name_or_path": str(path),
            "attn_implementation": cfg.student.get("attn_implementation"),
        })
    return out
