"""Validation of the composed config and of teacher/student fit, before any heavy work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from distill.errors import ConfigError, DistillError


def build(node: Any, key: str, **objects: Any) -> Any:
    """``hydra.utils.instantiate`` that turns a failure into one sentence naming the config key.

    Live objects (models, configs, modules) are passed to the constructor directly, not merged into
    the config, so OmegaConf never tries to convert them. Our own ``DistillError``s raised inside
    constructors pass through unchanged.
    """
    try:
        if not objects:
            return instantiate(node)
        factory = instantiate(node, _partial_=True)
    except InstantiationException as err:
        raise _as_config_error(err, key) from None
    try:
        return factory(**objects)
    except TypeError as err:
        raise ConfigError(f"{key} could not be built: {err}") from None


def _as_config_error(err: Exception, key: str) -> DistillError:
    cause = err.__cause__
    while cause is not None and not isinstance(cause, DistillError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, DistillError):
        return cause
    text = str(cause or err).strip()
    reason = text.splitlines()[-1] if text else type(err).__name__
    return ConfigError(f"{key} could not be built: {reason}")


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0


def check_checkpoint(path: Any, key: str = "ckpt_path") -> None:
    """A checkpoint to resume from must be a complete Lightning checkpoint; one sentence otherwise.

    It is read with ``weights_only=True`` (tensors and plain containers only: no code runs from the file).
    """
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{key}={path!r} must be null, auto or a checkpoint file.")
    if not Path(path).is_file():
        raise ConfigError(f"{key}={path!r} is not a file; give a checkpoint (e.g. <run>/checkpoints/last.ckpt), "
                          "auto or null.")
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, wrong format, unsafe pickle: all one answer
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{key}={path!r} is not a readable checkpoint ({reason[:120]}); it may be truncated or "
                          "corrupt: pass another, auto or null.") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise ConfigError(f"{key}={path!r} is not a Lightning checkpoint of a distill run (no state_dict / "
                          "global_step).")


def validate(cfg: DictConfig) -> None:
    """Cheap checks of the top-level keys; deeper checks happen as each object is built (all before any work)."""
    stage = cfg.get("stage")
    if not isinstance(stage, DictConfig) or not stage.get("_target_"):
        raise ConfigError(f"stage={stage!r} is not a stage preset; use stage=teacher, distill, eval or general.")
    if cfg.ckpt_path not in (None, "auto"):
        check_checkpoint(cfg.ckpt_path)
    if cfg.eval.split not in ("train", "dev"):
        raise ConfigError(f"eval.split={cfg.eval.split!r} is not allowed; use train or dev.")
    lr = (cfg.get("optimizer") or {}).get("lr")
    if lr is not None and not _positive(lr):
        raise ConfigError(f"optimizer.lr={lr!r} must be a positive number.")
    epochs = (cfg.get("trainer") or {}).get("max_epochs")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or (epochs < 1 and epochs != -1)):
        raise ConfigError(f"trainer.max_epochs={epochs!r} must be a positive whole number (or -1 with trainer.max_steps).")


def check_pair(student, teacher, tokenizer) -> None:
    """Refuse a student that can't learn from this teacher: vocabulary, tokenizer and label count must match."""
    s, t = student.config, teacher.config
    if s.vocab_size != t.vocab_size:
        raise ConfigError(
            f"student vocabulary ({s.vocab_size} tokens) does not match the teacher's ({t.vocab_size}); "
            f"the student must use the teacher's tokenizer."
        )
    if len(tokenizer) > t.vocab_size:
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but the teacher's vocabulary has {t.vocab_size}; "
            f"use the teacher's own tokenizer."
        )
    if s.num_labels != t.num_labels:
        raise ConfigError(f"student has {s.num_labels} labels but the teacher has {t.num_labels}.")
    if getattr(s, "max_position_embeddings", 0) < getattr(t, "max_position_embeddings", 0):
        raise ConfigError(
            f"student.max_position_embeddings={s.max_position_embeddings} is shorter than the teacher's "
            f"{t.max_position_embeddings}."
        )


def check_tokenizers(student_tokenizer, teacher_tokenizer) -> None:
    """A student that ships its own tokenizer must have exactly the teacher's vocabulary."""
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        raise ConfigError("the student's tokenizer differs from the teacher's; distillation needs one shared vocabulary.")
