"""Producers of the report's edge rows (ExecuTorch, LiteRT, Core ML), chosen in config by ``_target_``
(``quant.variants``, e.g. ``quant=edge``) or by ``scripts/export.py --formats executorch,litert,coreml``.

``variant(ctx) -> ModelEntry`` as in :mod:`distill.export.variants`: export into ``ctx.out_dir/<folder>/``
(artifact, manifest, tokenizer), run the artifact in its own runtime over ``ctx.calibration`` (the dev
batches) against the fp32 student, record the parity and its verdict (``status``) in the manifest and in the
entry's notes, and return the entry; the report then scores and times it like any other row (scoring the
very logits the parity check got from the runtime: each artifact runs over the dev set once, and the fp32
student's reference logits are computed once for all artifacts). Each runnable
artifact's ``load_ms`` and ``peak_memory_mb`` (:func:`distill.export.memory.measure`, a fresh process, batch 1)
go into the row's notes; ExecuTorch rows also note their bundled program's check. A failed parity keeps the
artifact; :func:`failed_rows` finds the failed rows of a report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from distill.export.edge import check_parity, save_tokenizer, source_of, update_manifest
from distill.export.edge import manifest_path as path_json
from distill.export.onnx import model_input_names
from distill.export.replay import Remembered, reference_logits
from distill.export.steps import step
from distill.report.entry import ModelEntry, VariantContext
from distill.report.evaluate import parity, run_model


class _EdgeVariant:
    fmt = ""
    runtime = ""
    suffix = ""
    precision = "fp32"

    def __init__(
        self,
        seq_len: int = 128,
        threads: int | None = None,
        name: str | None = None,
        folder: str | None = None,
    ) -> None:
        self.seq_len, self.threads = int(seq_len), threads
        self.name = name or f"student_{self.fmt}_{self.precision}"
        self.folder = folder or self.fmt

    def export(self, ctx: VariantContext, path: Path) -> Path:
        raise NotImplementedError

    def runner(self, ctx: VariantContext, path: Path) -> Any:
        raise NotImplementedError

    def memory(self, ctx: VariantContext, path: Path) -> dict[str, Any]:
        """``load_ms`` / ``peak_memory_mb`` of the artifact in its runtime (fresh process, batch 1 × seq_len)."""
        from distill.export.memory import measure

        got = measure(
            self.runtime, path, model_input_names(ctx.student), self.seq_len, int(self.threads or 1)
        )
        update_manifest(path, runtime_memory=got)
        return {"load_ms": got["load_ms"], "peak_memory_mb": got["peak_memory_mb"], "memory": got}

    def __call__(self, ctx: VariantContext) -> ModelEntry:
        # no longer than the position table: export specialises dimensions the model cannot take
        self.seq_len = min(
            self.seq_len, int(getattr(ctx.student.config, "max_position_embeddings", self.seq_len))
        )
        folder = ctx.out_dir / self.folder
        with step(f"{self.name}: export"):
            path = self.export(ctx, folder / f"model-{self.precision}{self.suffix}")
            save_tokenizer(ctx.tokenizer, folder)
        with step(f"{self.name}: load"):
            model = self.runner(ctx, path)
        notes: dict[str, Any] = {"manifest": str(path.with_suffix(".json")), "seq_len": self.seq_len}
        if model is not None:
            notes["load_s"] = getattr(model, "load_s", None)
            with step(f"{self.name}: load time + peak memory (fresh process)"):
                notes.update(self.memory(ctx, path))
            if ctx.calibration:
                with step(f"{self.name}: parity over the dev set"):
                    logits = run_model(model, ctx.calibration)
                    result = {
                        "examples": sum(len(b["input_ids"]) for b in ctx.calibration),
                        **parity(logits, reference_logits(ctx)),
                    }
                check = check_parity(result, self.precision)
                update_manifest(path, parity=check, status=check["status"])
                notes.update(parity_check=check["status"], export_parity=check)
                model = Remembered(model, ctx.calibration, logits)  # the report scores these very outputs
        return ModelEntry(
            self.name,
            model,
            path,
            format=self.fmt,
            precision=self.precision,
            params_of=ctx.student,
            runtime=self.runtime,
            notes=notes,
        )


class _ExecuTorch(_EdgeVariant):
    fmt, runtime, suffix = "executorch", "executorch", ".pte"

    def export(self, ctx: VariantContext, path: Path) -> Path:
        from distill.export.executorch import export_executorch

        return export_executorch(
            ctx.student,
            path,
            self.precision,
            self.seq_len,
            calibration=ctx.calibration,
            source=source_of(ctx.student_dir),
        )

    def runner(self, ctx: VariantContext, path: Path) -> Any:
        from distill.export.executorch import ExecuTorchClassifier

        return ExecuTorchClassifier(path, model_input_names(ctx.student), self.threads)

    def __call__(self, ctx: VariantContext) -> ModelEntry:
        entry = super().__call__(ctx)
        bundled = json.loads(path_json(entry.path).read_text()).get("bundled_program") or {}
        entry.notes["bundled_program"] = {k: bundled.get(k) for k in ("file", "cases", "atol", "check_here")}
        if not (bundled.get("check_here") or {}).get("passed", True):
            # the program fails its own device check here: as bad as failed parity
            entry.notes["parity_check"] = "failed"
            update_manifest(entry.path, status="failed")
        return entry


class ExecuTorchFP32(_ExecuTorch):
    """The fp32 student as an ExecuTorch ``.pte`` (XNNPACK), run in ``executorch.runtime``."""


class ExecuTorchInt8(_ExecuTorch):
    """PT2E int8 (XNNPACK quantizer; int8 embedding tables) as an ExecuTorch ``.pte``."""

    precision = "int8"


class _LiteRT(_EdgeVariant):
    fmt, runtime, suffix = "litert", "ai_edge_litert", ".tflite"

    def export(self, ctx: VariantContext, path: Path) -> Path:
        from distill.export.litert import export_litert

        return export_litert(
            ctx.student, path, self.precision, self.seq_len, source=source_of(ctx.student_dir)
        )

    def runner(self, ctx: VariantContext, path: Path) -> Any:
        from distill.export.litert import LiteRTClassifier

        return LiteRTClassifier(path, model_input_names(ctx.student), self.threads)


class LiteRTFP32(_LiteRT):
    """The fp32 student as a LiteRT ``.tflite`` (batch 1 × ``seq_len``), run in ai-edge-litert's interpreter."""


class LiteRTInt8(_LiteRT):
    """Dynamic-range int8 (ai-edge-quantizer; int8 embedding tables) as a LiteRT ``.tflite``."""

    precision = "int8"


class _CoreML(_EdgeVariant):
    fmt, runtime, suffix = "coreml", None, ".mlpackage"

    def export(self, ctx: VariantContext, path: Path) -> Path:
        from distill.export.coreml import export_coreml

        return export_coreml(
            ctx.student, path, self.precision, self.seq_len, source=source_of(ctx.student_dir)
        )

    def runner(self, ctx: VariantContext, path: Path) -> None:
        return None  # Core ML runs only on macOS: the row has size and program checks, no metrics or latency

    def __call__(self, ctx: VariantContext) -> ModelEntry:
        from distill.export.coreml import NOT_CHECKED

        entry = super().__call__(ctx)
        entry.metrics = {}
        entry.notes.update(numerics=NOT_CHECKED, parity_check="not checked")
        return entry


class CoreMLFP16(_CoreML):
    """The student as a Core ML ML program in fp16 (converted and inspected; not run: needs macOS)."""

    precision = "fp16"


class CoreMLInt8(_CoreML):
    """Core ML with int8 weights (coremltools linear quantization), fp16 compute (not run: needs macOS)."""

    precision = "int8"


FORMAT_VARIANTS: dict[str, tuple[type[_EdgeVariant], ...]] = {
    "executorch": (ExecuTorchFP32, ExecuTorchInt8),
    "litert": (LiteRTFP32, LiteRTInt8),
    "coreml": (CoreMLFP16, CoreMLInt8),
}


def failed_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of a report whose artifact failed its parity check."""
    return [r for r in report.get("models") or [] if (r.get("notes") or {}).get("parity_check") == "failed"]
