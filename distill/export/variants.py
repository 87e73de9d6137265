"""Producers of the report's exported rows, chosen in config by ``_target_`` (``quant.variants``).

``variant(ctx) -> ModelEntry`` as in :mod:`distill.quant.variants`: export, check, return the entry.
"""

from __future__ import annotations

from distill.export.onnx import OnnxClassifier, export_onnx_with_int8
from distill.report.entry import ModelEntry, VariantContext


class OnnxInt8:
    """The fp32 student exported to ONNX and quantized by onnxruntime (dynamic int8), run by onnxruntime.

    Writes ``onnx/model.onnx`` and ``onnx/model.int8.onnx`` under ``ctx.out_dir``; the export's parity with
    PyTorch (on ``ctx.calibration``, or random padded batches) goes into the entry's notes.
    ``embeddings`` also quantizes the embedding tables (``Gather``).
    """

    def __init__(self, embeddings: bool = False, name: str = "student_onnx_int8", folder: str = "onnx") -> None:
        self.embeddings, self.name, self.folder = bool(embeddings), name, folder

    def __call__(self, ctx: VariantContext) -> ModelEntry:
        _, int8_path, onnx_parity = export_onnx_with_int8(ctx.student, ctx.out_dir / self.folder, self.embeddings,
                                                          ctx.calibration)
        return ModelEntry(self.name, OnnxClassifier(int8_path), int8_path, format="onnx", precision="int8",
                          params_of=ctx.student, runtime="onnxruntime",
                          notes={"onnx_parity": onnx_parity, "embeddings": self.embeddings})
