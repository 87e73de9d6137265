"""Run each model over the dev set once per export: the fp32 student's reference logits shared by every
artifact's parity check, and an artifact's own logits handed on to the report.

Without this an edge export ran the student over the dev set once per artifact plus once in the report, and
every artifact twice (parity, then the report's metric) — the same outputs each time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from distill.export.edge import weights_key
from distill.report.entry import VariantContext
from distill.report.evaluate import run_model

_REFERENCE: dict[str, Any] = {}  # one slot: the last (student, batches, weights' versions) and its logits


def reference_logits(ctx: VariantContext) -> list[torch.Tensor]:
    """The fp32 student's logits (B, C) over ``ctx.calibration``, computed once for the same student (same
    weights, unchanged) and the same batches, however many artifacts ask."""
    key = (id(ctx.student), id(ctx.calibration), weights_key(ctx.student))
    if _REFERENCE.get("key") != key or _REFERENCE.get("student") is not ctx.student:
        _REFERENCE.clear()
        logits = run_model(ctx.student, ctx.calibration or [])
        _REFERENCE.update(key=key, student=ctx.student, batches=ctx.calibration, logits=logits)
    return _REFERENCE["logits"]


class Remembered:
    """A runtime classifier that answers the batches it already ran (the very same ``input_ids`` tensors, not
    written since) with the logits it gave then, and runs anything else (the timing inputs, other data).

    Attributes (``threads``, ``load_s``, ...) are the wrapped classifier's.
    """

    def __init__(self, model: Any, batches: Sequence[Mapping[str, Any]], logits: Sequence[torch.Tensor]) -> None:
        self.model = model
        self._known = {
            id(b["input_ids"]): (b["input_ids"], b["input_ids"]._version, out)
            for b, out in zip(batches, logits, strict=True)
        }

    def __getattr__(self, name: str) -> Any:
        if name == "model":  # not set yet (copy / unpickle): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def __call__(self, **inputs: Any) -> torch.Tensor:
        ids = inputs.get("input_ids")
        known = self._known.get(id(ids))
        if known is not None and known[0] is ids and ids._version == known[1]:
            return known[2]
        return self.model(**inputs)


__all__ = ["Remembered", "reference_logits"]
