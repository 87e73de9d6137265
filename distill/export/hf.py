"""Hugging Face format: ``save_pretrained`` folders in fp32 and fp16, with the tokenizer."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn

DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


def export_hf(model: nn.Module, out_dir: str | Path, tokenizer: Any = None,
              dtypes: tuple[str, ...] = ("fp32", "fp16")) -> dict[str, Path]:
    """Write ``out_dir/hf-<dtype>`` for each dtype (loadable with ``AutoModelForSequenceClassification``).

    fp16 halves the size on disk; load it with ``torch_dtype=torch.float16`` or let it upcast to fp32 on CPU.
    """
    out = {}
    for name in dtypes:
        folder = Path(out_dir) / f"hf-{name}"
        target = model if DTYPES[name] == torch.float32 else copy.deepcopy(model).to(DTYPES[name])
        target.save_pretrained(folder)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        out[f"hf-{name}"] = folder
    return out
