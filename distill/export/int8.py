"""torchao int8 format: a student quantized to int8 (PTQ unless it already is int8), see distill.quant.io."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from distill.quant import is_int8, ptq_dynamic_int8, save_int8


def export_int8(model: nn.Module, out_dir: str | Path, tokenizer: Any = None, embeddings: bool = False,
                source: str | None = None) -> Path:
    """Write ``out_dir`` as an int8 folder; an fp32 model is quantized post-training first (dynamic int8).

    Load it back with ``distill.quant.load_int8(out_dir)``.
    """
    if not is_int8(model):
        model = ptq_dynamic_int8(model, embeddings=embeddings)
        source = source or "ptq"
    return save_int8(model, out_dir, tokenizer, extra={"source": source or "int8 model"})
