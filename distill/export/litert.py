"""LiteRT (TensorFlow Lite): ``litert-torch`` → ``.tflite`` fp32, and dynamic-range int8 by ai-edge-quantizer.

LiteRT's converter cannot express dynamic shapes for this model, so the artifact has a fixed shape: batch 1
× ``seq_len`` int32 tokens (stated in the manifest); :class:`LiteRTClassifier` right-pads each example to
``seq_len`` (padding is masked out, so logits do not change) and runs the examples one by one in
``ai_edge_litert``'s interpreter. int8: int8 weights of every fully-connected layer (activations stay
float, quantized on the fly by the kernels) and int8 per-row embedding tables.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.errors import DataError
from distill.export.edge import (
    LogitsModule,
    example_inputs,
    feed,
    int8_embeddings,
    manifest,
    require,
    write_manifest,
)
from distill.export.onnx import model_input_names


def export_litert(
    model: nn.Module,
    path: str | Path,
    precision: str = "fp32",
    seq_len: int = 128,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``path`` (a ``.tflite``, inputs (1, seq_len) int32) and its manifest; ``precision`` ``fp32``
    or ``int8`` (dynamic range)."""
    litert_torch = require("litert")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = model_input_names(model)
    base = int8_embeddings(model) if precision == "int8" else model.eval()
    module = LogitsModule(base, names, cast_long=True).eval()
    example = dict(zip(names, example_inputs(model, 1, seq_len, torch.int32), strict=True))
    converted = litert_torch.convert(
        module, sample_kwargs=example
    )  # keyword inputs name the signature's inputs
    if precision == "int8":
        require("litert-quantizer")
        from ai_edge_quantizer import quantizer, recipe

        fp32 = path.with_name(path.stem + ".fp32-tmp.tflite")
        converted.export(str(fp32))
        q = quantizer.Quantizer(str(fp32))
        q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        q.quantize().export_model(str(path), overwrite=True)
        fp32.unlink()
    else:
        converted.export(str(path))
    inputs = [{"name": n, "dtype": "int32", "shape": [1, seq_len]} for n in names]
    write_manifest(
        path,
        manifest(
            model,
            "litert",
            precision,
            path,
            inputs,
            source,
            seq_len=seq_len,
            runtime="ai_edge_litert.interpreter (XNNPACK delegate)",
            padding="right-pad every example to seq_len with attention_mask 0",
            quantization=(
                "ai-edge-quantizer dynamic range: int8 weights, float activations; "
                "int8 per-row embedding tables"
            )
            if precision == "int8"
            else None,
        ),
    )
    return path


class LiteRTClassifier:
    """A ``.tflite`` in ``ai_edge_litert``'s interpreter, called like a HF model → logits (B, C) float32.

    Inputs (B, T) with T ≤ the artifact's sequence length; each example is right-padded and run alone.
    """

    def __init__(self, path: str | Path, input_names: Sequence[str], threads: int | None = None) -> None:
        require("litert-runtime")
        from ai_edge_litert.interpreter import Interpreter

        self.path, self.input_names = Path(path), tuple(input_names)
        self.threads = int(threads or torch.get_num_threads())
        start = time.perf_counter()
        self.interpreter = Interpreter(model_path=str(self.path), num_threads=self.threads)
        self.runner = self.interpreter.get_signature_runner()
        self.load_s = time.perf_counter() - start
        details = self.interpreter.get_input_details()
        self.seq_len = int(details[0]["shape"][1])

    def __call__(self, **inputs: Any) -> torch.Tensor:
        tensors = feed(self.input_names, inputs)  # each (B, T)
        batch, length = tensors[0].shape
        if length > self.seq_len:
            raise DataError(
                f"{self.path.name} takes at most {self.seq_len} tokens (a fixed LiteRT shape); "
                f"got {length}: tokenize with max_length={self.seq_len}."
            )
        padded = [
            torch.nn.functional.pad(t, (0, self.seq_len - length)).to(torch.int32).numpy() for t in tensors
        ]
        rows = []
        for i in range(batch):
            out = self.runner(
                **{n: np.ascontiguousarray(t[i : i + 1]) for n, t in zip(self.input_names, padded)}
            )
            rows.append(next(iter(out.values())))
        return torch.from_numpy(np.concatenate(rows)).float()  # (B, C)
