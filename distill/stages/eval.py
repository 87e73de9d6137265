"""Stage ``eval``: score a saved model (and optionally the teacher it came from) on a split; the same report."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from transformers import AutoTokenizer

from distill.blocks import build_datamodule
from distill.config import check_tokenizers
from distill.errors import ConfigError
from distill.models.teacher import load_classifier, load_config
from distill.report import ModelEntry
from distill.stages.report import report_models


def run(cfg: DictConfig, output_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    if not cfg.eval.model_path:
        raise ConfigError("eval.model_path is not set; stage=eval needs a saved model folder (e.g. a run's student/).")
    path = str(cfg.eval.model_path)
    load_config(path)
    dm = build_datamodule(cfg, path)
    entries = [ModelEntry("student", load_classifier(path, dm.spec), Path(path), format="pytorch", precision="fp32")]
    if cfg.eval.teacher_path:
        teacher = str(cfg.eval.teacher_path)
        if (Path(path) / "tokenizer_config.json").is_file():
            check_tokenizers(AutoTokenizer.from_pretrained(path), AutoTokenizer.from_pretrained(teacher))
        entries.insert(0, ModelEntry("teacher", load_classifier(teacher, dm.spec), Path(teacher), format="pytorch",
                                     precision="fp32"))
    return report_models(cfg, dm, output_dir, entries)
