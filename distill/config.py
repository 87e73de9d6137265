"""Validation of the composed config and of teacher/student fit, before any heavy work."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from distill.errors import ConfigError, DistillError

STAGES = ("teacher", "distill", "eval")


def build(node: Any, key: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` that turns a failure into one sentence naming the config key.

    Our own ``DistillError``s raised inside constructors are passed through unchanged.
    """
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while cause is not None and not isinstance(cause, DistillError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, DistillError):
            raise cause from None
        reason = str(cause or err).strip().splitlines()[-1] if str(cause or err).strip() else type(err).__name__
        raise ConfigError(f"{key} could not be built: {reason}") from None


def validate(cfg: DictConfig) -> None:
    """Cheap checks of the top-level keys; deeper checks happen as each object is built."""
    if cfg.stage not in STAGES:
        raise ConfigError(f"stage={cfg.stage!r} is not allowed; use one of {', '.join(STAGES)}.")
    if cfg.ckpt_path not in (None, "auto") and not isinstance(cfg.ckpt_path, str):
        raise ConfigError(f"ckpt_path={cfg.ckpt_path!r} must be null, auto or a checkpoint file.")
    if cfg.stage == "eval" and not cfg.eval.model_path:
        raise ConfigError("eval.model_path is not set; stage=eval needs a saved model folder (e.g. a run's student/).")
    if cfg.eval.split not in ("train", "dev"):
        raise ConfigError(f"eval.split={cfg.eval.split!r} is not allowed; use train or dev.")


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
