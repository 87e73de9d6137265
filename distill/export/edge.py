"""What the edge formats (ExecuTorch, LiteRT, Core ML) share: optional extras, the exported module, the
manifest written beside every artifact and the parity check against the PyTorch student.

An artifact takes ``input_ids`` / ``attention_mask`` [/ ``token_type_ids``] (B, T) integer tensors and returns
logits (B, C) float32. Its manifest (``<artifact>.json``) states format, precision, inputs (name, dtype, shape
or range), sequence length, label names, the run and student it came from and, once checked, its parity
and ``status`` (``passed`` / ``failed`` / ``not checked``).
"""

from __future__ import annotations

import copy
import importlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.errors import ConfigError, DistillError
from distill.export.onnx import INPUT_NAMES, model_input_names

# precision → (largest allowed max |Δlogit| or None, smallest share of identical predictions); issue 14's targets
PARITY_THRESHOLDS: dict[str, tuple[float | None, float]] = {"fp32": (1e-4, 0.995), "int8": (None, 0.99)}

EXTRAS = {
    "executorch": ("executorch", "executorch"),
    "litert": ("litert_torch", "litert"),
    "litert-runtime": ("ai_edge_litert", "litert"),
    "litert-quantizer": ("ai_edge_quantizer", "litert"),
    "coreml": ("coremltools", "coreml"),
}


class ParityFailed(DistillError):
    """An artifact failed its parity threshold: it is kept and marked failed (the CLI exits with status 1)."""

    def __init__(self, message: str, written: dict[str, str]) -> None:
        super().__init__(message)
        self.written = written


def require(what: str) -> Any:
    """Import the package behind ``what`` (a key of ``EXTRAS``) or raise one sentence with the pip command."""
    module, extra = EXTRAS[what]
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(
            f"the {extra} export needs the optional extra '{extra}' ({module} is not installed): "
            f'pip install "torch==2.13.0" -e ".[{extra}]"'
        ) from e


class LogitsModule(nn.Module):
    """A HF classifier as ``forward(input_ids, attention_mask[, token_type_ids]) -> logits (B, C)``.

    ``names`` are the inputs the model takes (``model_input_names``); ``cast_long`` casts them to int64 first
    (LiteRT and Core ML feed int32 tensors).
    """

    def __init__(self, model: nn.Module, names: tuple[str, ...], cast_long: bool = False) -> None:
        super().__init__()
        self.model, self.names, self.cast_long = model, names, cast_long

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        kwargs = {n: (given[n].long() if self.cast_long else given[n]) for n in self.names}
        return self.model(**kwargs).logits  # (B, C)


def int8_embeddings(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose embedding tables are int8 with one scale per row (``Int8Embedding``).

    Embedding tables are ~2/3 of a small student's weights; the runtimes' int8 schemes cover only linear
    layers, so without this an int8 artifact is only ~1.3x smaller than fp32.
    """
    from distill.quant.core import Int8Embedding

    model = copy.deepcopy(model).eval()
    for name, module in list(model.named_modules()):
        if type(module) is nn.Embedding:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, Int8Embedding.from_float(module))
    return model


def example_inputs(
    model: nn.Module, batch: int, seq: int, dtype: torch.dtype = torch.long
) -> tuple[torch.Tensor, ...]:
    """Example inputs (B, T) in ``model_input_names`` order: random ids, a full mask, zero token types."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq), generator=g)
    values = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "token_type_ids": torch.zeros_like(ids),
    }
    return tuple(values[n].to(dtype) for n in model_input_names(model))


def feed(names: Iterable[str], inputs: Mapping[str, Any]) -> list[torch.Tensor]:
    """The tensors a runtime takes, in ``names`` order, from keyword inputs (missing mask/types filled)."""
    ids = torch.as_tensor(inputs["input_ids"])
    out = []
    for name in names:
        value = inputs.get(name)
        if value is None:
            value = torch.zeros_like(ids) if name == "token_type_ids" else torch.ones_like(ids)
        out.append(torch.as_tensor(value))
    return out


def unpadded_length(mask: torch.Tensor, minimum: int = 1) -> int:
    """How many leading positions of one right-padded example (``mask`` (T,): 1 … 1 0 … 0) to run: its real
    tokens, at least ``minimum`` (a program's shortest sequence; the extra positions stay masked) and at most
    T. A row that is not right-padded (left padding, gaps) keeps its full length T."""
    total, real = int(mask.shape[-1]), int(mask.sum())
    if real == total or not bool(mask[:real].all()):
        return total
    return min(total, max(minimum, real))


def weights_key(model: nn.Module) -> tuple:
    """A key that changes when a parameter or buffer of ``model`` is replaced or written in place
    (``Tensor._version``): what lets a conversion or a reference pass be reused safely."""
    return tuple((t.data_ptr(), t._version) for t in (*model.parameters(), *model.buffers()))


def label_names(model: nn.Module) -> list[str]:
    id2label = getattr(model.config, "id2label", None) or {}
    return [str(id2label.get(i, id2label.get(str(i), i))) for i in range(int(model.config.num_labels))]


def manifest(
    model: nn.Module,
    fmt: str,
    precision: str,
    artifact: Path,
    inputs: list[dict[str, Any]],
    source: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The manifest dict of an artifact; ``inputs`` are ``{"name", "dtype", "shape"}`` (a dim: int or [min, max])."""
    return {
        "format": fmt,
        "precision": precision,
        "artifact": artifact.name,
        "inputs": inputs,
        "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", int(model.config.num_labels)]}],
        "label_names": label_names(model),
        "source": dict(source or {}),
        "status": "not checked",
        **extra,
    }


def manifest_path(artifact: str | Path) -> Path:
    """``model-int8.pte`` → ``model-int8.json``."""
    return Path(artifact).with_suffix(".json")


def write_manifest(artifact: str | Path, data: Mapping[str, Any]) -> Path:
    path = manifest_path(artifact)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def update_manifest(artifact: str | Path, **changes: Any) -> dict[str, Any]:
    path = manifest_path(artifact)
    data = {**json.loads(path.read_text()), **changes}
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return data


def save_tokenizer(tokenizer: Any, folder: Path) -> None:
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def check_parity(result: Mapping[str, Any], precision: str) -> dict[str, Any]:
    """``result`` (``max_abs_logit_diff``, ``agreement``) judged against ``PARITY_THRESHOLDS[precision]``:
    the same dict with ``thresholds`` and ``status`` (``passed`` / ``failed``)."""
    max_diff, min_agree = PARITY_THRESHOLDS[precision]
    diff, agree = result.get("max_abs_logit_diff"), result.get("agreement")
    ok = (max_diff is None or (diff is not None and diff <= max_diff)) and (
        agree is None or agree >= min_agree
    )
    return {
        **result,
        "thresholds": {"max_abs_logit_diff": max_diff, "agreement": min_agree},
        "status": "passed" if ok else "failed",
    }


def source_of(student_dir: Path | str | None) -> dict[str, str]:
    """Which run and student an artifact came from."""
    if student_dir is None:
        return {}
    student_dir = Path(student_dir).resolve()
    run = student_dir.parent if (student_dir.parent / ".hydra").is_dir() else None
    return {"student": str(student_dir), "run": str(run) if run else None}


__all__ = [
    "EXTRAS",
    "INPUT_NAMES",
    "LogitsModule",
    "PARITY_THRESHOLDS",
    "ParityFailed",
    "check_parity",
    "example_inputs",
    "feed",
    "int8_embeddings",
    "label_names",
    "manifest",
    "manifest_path",
    "require",
    "save_tokenizer",
    "source_of",
    "unpadded_length",
    "update_manifest",
    "weights_key",
    "write_manifest",
]
