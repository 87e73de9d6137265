"""Producers of the report's int8 rows, chosen in config by ``_target_`` (``quant.variants``).

Each is a small callable: ``variant(ctx) -> ModelEntry``, with ``ctx`` a
:class:`distill.report.VariantContext`. It quantizes, saves under ``ctx.out_dir`` and returns the entry;
the report measures it like any other row.
"""

from __future__ import annotations

from collections.abc import Sequence

from distill.errors import ConfigError
from distill.quant.core import convert_qat, is_qat_prepared, ptq_dynamic_int8
from distill.quant.io import save_int8
from distill.report.entry import ModelEntry, VariantContext


class QATInt8:
    """The QAT-trained student converted to real int8 (``convert_qat``), saved in ``student-int8-qat/``."""

    def __init__(self, name: str = "student_int8_qat", folder: str = "student-int8-qat") -> None:
        self.name, self.folder = name, folder

    def __call__(self, ctx: VariantContext) -> ModelEntry:
        if not is_qat_prepared(ctx.trained):
            raise ConfigError("quant.variants.student_int8_qat needs a student trained with fake quantization "
                              "(quant.callback = QATCallback, as in quant=qat_int8); this one has none.")
        int8 = convert_qat(ctx.trained)
        path = save_int8(int8, ctx.out_dir / self.folder, ctx.tokenizer, extra={"source": "qat"})
        return ModelEntry(self.name, int8, path, format="torchao", precision="int8", runtime="torch",
                          notes={"source": "qat"})


class PTQInt8:
    """Post-training dynamic int8 of the fp32 student (``ptq_dynamic_int8``), saved in ``student-int8-ptq/``.

    ``embeddings`` also quantizes the embedding tables; ``layers`` names the layer types made int8.
    """

    def __init__(self, embeddings: bool = False, layers: Sequence[str] = ("Linear",),
                 name: str = "student_int8_ptq", folder: str = "student-int8-ptq") -> None:
        self.embeddings, self.layers = bool(embeddings), tuple(layers)
        self.name, self.folder = name, folder

    def __call__(self, ctx: VariantContext) -> ModelEntry:
        int8 = ptq_dynamic_int8(ctx.student, layers=self.layers, embeddings=self.embeddings)
        path = save_int8(int8, ctx.out_dir / self.folder, ctx.tokenizer, extra={"source": "ptq"})
        return ModelEntry(self.name, int8, path, format="torchao", precision="int8", runtime="torch",
                          notes={"source": "ptq", "embeddings": self.embeddings})
