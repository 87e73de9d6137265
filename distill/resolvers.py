"""OmegaConf resolvers used by ``conf/``: the project root and the offline default teacher."""

from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

from distill.models.teacher import default_teacher_path


def register() -> None:
    """Register ``${distill_root:}`` and ``${default_teacher:}`` (idempotent)."""
    resolvers = {
        "distill_root": lambda: str(Path(__file__).resolve().parents[1]),
        "default_teacher": default_teacher_path,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn, use_cache=True)
