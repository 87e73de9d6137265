"""What the report takes: one :class:`ModelEntry` per model, and the :class:`VariantContext` that producers
of quantized / exported entries (``distill.quant.variants``, ``distill.export.variants``) read.

A new format (ExecuTorch, LiteRT, Core ML, ...) is a new producer returning a ``ModelEntry``; the report
has no code path per format.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn


@dataclass
class ModelEntry:
    """One model to report.

    ``model`` is an ``nn.Module`` or any callable taking ``input_ids`` / ``attention_mask`` [/
    ``token_type_ids``] keyword tensors (B, T) int64 and returning logits (B, C) or an output with
    ``.logits`` (e.g. ``distill.export.onnx.OnnxClassifier``). ``path`` is where its weights lie on disk
    (for the size column; ``None``: not saved). ``params_of`` is the module whose parameters are counted
    when ``model`` is not an ``nn.Module``. ``metrics`` given: evaluation is skipped and these are reported.
    ``model=None``: a row of size and notes only (the artifact cannot run on this machine).
    """

    name: str
    model: Any
    path: str | Path | None = None
    format: str = "pytorch"
    precision: str = "fp32"
    params_of: nn.Module | None = None
    metrics: dict[str, float] | None = None
    runtime: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def counted(self) -> nn.Module | None:
        """The module whose parameters the row counts (``model`` itself when it is a module)."""
        return self.model if isinstance(self.model, nn.Module) else self.params_of


@dataclass
class VariantContext:
    """What a variant producer gets: the trained student, its plain fp32 copy and where to write.

    ``trained`` is the student as trained (may carry QAT fake-quant modules); ``student`` the plain fp32
    student (fake quant stripped), saved in ``student_dir``; ``out_dir`` the run's ``compression/`` folder;
    ``calibration`` a list of eval batches (dicts of (B, T) tensors), or ``None``.
    """

    trained: nn.Module
    student: nn.Module
    student_dir: Path
    tokenizer: Any
    out_dir: Path
    calibration: list[dict[str, Any]] | None = None
