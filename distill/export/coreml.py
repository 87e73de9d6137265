"""Core ML: ``torch.export(...).run_decompositions()`` → ``coremltools`` ML program (``.mlpackage``), fp16, and
int8 weights by coremltools' linear quantization (per channel, symmetric).

Core ML's ``predict`` runs only on macOS, so here the package is checked without running it
(:func:`inspect_coreml`): its inputs, outputs and shape ranges, the ops, and the weight file size. On-device
numerics are not checked; the manifest and the report say so. The int8 pass skips constants that are not
finite or that feed no weight-bearing op (the attention mask's fill, -inf in fp16, would get a non-finite
scale), and takes one scale per tensor where a row is all zero (the ``[PAD]`` embedding).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from distill.export.edge import LogitsModule, example_inputs, manifest, require, weights_key, write_manifest
from distill.export.onnx import model_input_names

NOT_CHECKED = "Core ML predictions need macOS: on-device numerics were not checked here"
QUANTIZED_OPS = ("linear", "matmul", "gather", "gather_along_axis")


_CONVERTED: dict[str, Any] = {}  # one slot: the last conversion, reused by the other precision


def _convert_once(model: nn.Module, seq_len: int, max_batch: int):
    """:func:`_convert`, reused when the same model (same weights, unchanged) is converted with the same
    shapes again: fp16 and int8 are the same ML program (int8 quantizes its weights into a new model)."""
    key = (id(model), seq_len, max_batch, weights_key(model))
    if _CONVERTED.get("key") != key or _CONVERTED.get("model") is not model:
        _CONVERTED.clear()
        _CONVERTED.update(key=key, model=model, converted=_convert(model, seq_len, max_batch))
    return _CONVERTED["converted"]


def _convert(model: nn.Module, seq_len: int, max_batch: int):
    ct = require("coreml")
    names = model_input_names(model)
    module = LogitsModule(model.eval(), names, cast_long=True).eval()
    example = example_inputs(model, 2, min(16, seq_len), torch.int32)
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    seq = torch.export.Dim("sequence", min=2, max=seq_len)
    program = torch.export.export(module, example, dynamic_shapes=({0: batch, 1: seq},) * len(names))
    program = program.run_decompositions()  # core ATen: coremltools has no converter for e.g. new_ones
    mlmodel = ct.convert(
        program,
        convert_to="mlprogram",
        compute_precision=ct.precision.FLOAT16,
        minimum_deployment_target=ct.target.iOS17,
    )
    return mlmodel, names


def _save_named(mlmodel, path: Path) -> None:
    """Save with the output named ``logits`` (the converter names it after the last graph node)."""
    ct = require("coreml")
    spec = mlmodel.get_spec()
    ct.utils.rename_feature(spec, spec.description.output[0].name, "logits")
    ct.models.MLModel(spec, weights_dir=mlmodel.weights_dir, skip_model_load=True).save(str(path))


def _quantize_weights(mlmodel):
    import coremltools.optimize.coreml as cto

    def config(granularity: str):
        return cto.OpLinearQuantizerConfig(
            mode="linear_symmetric", dtype="int8", granularity=granularity, weight_threshold=256
        )

    names: dict[str, Any] = {}
    for op in mlmodel._mil_program.functions["main"].operations:
        value = op.outputs[0].val if op.op_type == "const" else None
        if not (isinstance(value, np.ndarray) and value.dtype.kind == "f"):
            continue
        if not np.isfinite(value).all() or not any(
            c.op_type in QUANTIZED_OPS for c in op.outputs[0].child_ops
        ):
            names[op.name] = None  # the mask's fill (-inf in fp16) and anything that is not a weight
        elif value.ndim == 2 and not np.abs(value).max(axis=1).all():
            names[op.name] = config(
                "per_tensor"
            )  # an all-zero row (the [PAD] embedding) has no per-row scale
    return cto.linear_quantize_weights(
        mlmodel, cto.OptimizationConfig(global_config=config("per_channel"), op_name_configs=names)
    )


def inspect_coreml(path: str | Path) -> dict[str, Any]:
    """What can be checked without macOS: inputs / outputs (name, dtype, shape ranges), op counts by type,
    weight file size (MB) and whether every int8 weight scale is finite."""
    ct = require("coreml")
    path = Path(path)
    mlmodel = ct.models.MLModel(str(path), skip_model_load=True)
    spec = mlmodel.get_spec()

    def feature(f) -> dict[str, Any]:
        arr = f.type.multiArrayType
        ranges = [[r.lowerBound, r.upperBound] for r in arr.shapeRange.sizeRanges]
        return {
            "name": f.name,
            "dtype": ct.proto.FeatureTypes_pb2.ArrayFeatureType.ArrayDataType.Name(arr.dataType),
            "shape": ranges or list(arr.shape),
        }

    ops: dict[str, int] = {}
    for block in spec.mlProgram.functions["main"].block_specializations.values():
        for op in block.operations:
            ops[op.type] = ops.get(op.type, 0) + 1
    weights = sum(p.stat().st_size for p in path.rglob("weight.bin"))
    return {
        "inputs": [feature(f) for f in spec.description.input],
        "outputs": [feature(f) for f in spec.description.output],
        "ops": ops,
        "weights_mb": weights / 1e6,
        "spec_version": spec.specificationVersion,
    }


def export_coreml(
    model: nn.Module,
    path: str | Path,
    precision: str = "fp16",
    seq_len: int = 128,
    max_batch: int = 128,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``path`` (an ``.mlpackage``; inputs (B, T) int32, B in 1..max_batch, T in 2..seq_len) and its
    manifest; ``precision`` ``fp16`` or ``int8`` (int8 weights, fp16 compute)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mlmodel, names = _convert_once(model, seq_len, max_batch)
    if precision == "int8":
        mlmodel = _quantize_weights(mlmodel)
    _save_named(mlmodel, path)
    checked = inspect_coreml(path)
    inputs = [{"name": f["name"], "dtype": "int32", "shape": f["shape"]} for f in checked["inputs"]]
    write_manifest(
        path,
        manifest(
            model,
            "coreml",
            precision,
            path,
            inputs,
            source,
            seq_len=seq_len,
            runtime="Core ML (macOS / iOS 17+)",
            program=checked,
            numerics=NOT_CHECKED,
            quantization="coremltools linear_quantize_weights: int8 per-channel weights, fp16 compute"
            if precision == "int8"
            else None,
        ),
    )
    return path
