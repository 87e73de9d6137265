"""ExecuTorch: ``torch.export`` → ``to_edge_transform_and_lower`` (XNNPACK partitioner) → ``.pte``, fp32 and int8.

int8 is PT2E with the XNNPACK quantizer (int8 per-channel weights × dynamically quantized int8 activations
for every linear layer), calibrated on a few batches, with int8 embedding tables
(:func:`distill.export.edge.int8_embeddings`). Batch and sequence length are dynamic (1..``max_batch``,
2..``seq_len``); the export example has batch 2, since batch 1 would specialise the batch dimension.
:class:`ExecuTorchClassifier` runs a ``.pte`` in ``executorch.runtime``.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from distill.export.edge import (
    LogitsModule,
    example_inputs,
    feed,
    int8_embeddings,
    manifest,
    manifest_path,
    require,
    write_manifest,
)
from distill.export.onnx import model_input_names


def _dynamic_shapes(n_inputs: int, seq_len: int, max_batch: int) -> tuple[dict[int, Any], ...]:
    batch = torch.export.Dim("batch", min=1, max=max_batch)
    seq = torch.export.Dim("sequence", min=2, max=seq_len)
    return ({0: batch, 1: seq},) * n_inputs


def keep_integer_constants(gm: torch.fx.GraphModule) -> int:
    """Cast back to int64 the 0-d float constants that ``prepare_pt2e`` made of integer scalars added to
    integer tensors (the ``arange(T) + 0`` of transformers' attention-mask code); as float32 they turn the
    mask's index tensors into floats and calibration fails. Returns how many were fixed."""
    fixed = 0
    for node in gm.graph.nodes:
        if node.op != "get_attr":
            continue
        value = functools.reduce(getattr, node.target.split("."), gm)
        if not (torch.is_tensor(value) and value.dim() == 0 and value.is_floating_point()):
            continue
        others = [
            a for user in node.users for a in user.args if isinstance(a, torch.fx.Node) and a is not node
        ]
        vals = [o.meta.get("val") for o in others]
        if vals and all(torch.is_tensor(v) and not v.dtype.is_floating_point for v in vals):
            parent, _, name = node.target.rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, name, value.long())
            fixed += 1
    gm.recompile()
    return fixed


def _quantize_pt2e(
    module: nn.Module, example: tuple, dynamic: tuple, calibration: Sequence[tuple]
) -> nn.Module:
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    gm = torch.export.export(module, example, dynamic_shapes=dynamic).module()
    quantizer = XNNPACKQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
    )
    gm = prepare_pt2e(gm, quantizer)
    keep_integer_constants(gm)
    with torch.no_grad():
        for inputs in calibration:
            gm(*inputs)
    return convert_pt2e(gm)


def export_executorch(
    model: nn.Module,
    path: str | Path,
    precision: str = "fp32",
    seq_len: int = 128,
    max_batch: int = 128,
    calibration: Sequence[Mapping[str, Any]] | None = None,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``path`` (a ``.pte``) and its manifest; ``precision`` ``fp32`` or ``int8`` (PT2E, calibrated
    on ``calibration`` batches, random ones when None). Inputs (B, T) int64, B in 1..max_batch, T in 2..seq_len."""
    require("executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = model_input_names(model)
    base = int8_embeddings(model) if precision == "int8" else model.eval()
    module = LogitsModule(base, names).eval()
    example = example_inputs(model, 2, min(16, seq_len))
    dynamic = _dynamic_shapes(len(names), seq_len, max_batch)
    if precision == "int8":
        batches = [tuple(feed(names, b)) for b in (calibration or [])[:4]] or [example]
        module = _quantize_pt2e(module, example, dynamic, batches)
    program = torch.export.export(module, example, dynamic_shapes=dynamic)
    lowered = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch()
    path.write_bytes(lowered.buffer)
    inputs = [{"name": n, "dtype": "int64", "shape": [[1, max_batch], [2, seq_len]]} for n in names]
    write_manifest(
        path,
        manifest(
            model,
            "executorch",
            precision,
            path,
            inputs,
            source,
            seq_len=seq_len,
            runtime="executorch.runtime (XNNPACK delegate)",
            quantization=(
                "PT2E XNNPACK: int8 per-channel weights, dynamic int8 activations; "
                "int8 per-row embedding tables"
            )
            if precision == "int8"
            else None,
        ),
    )
    return path


class ExecuTorchClassifier:
    """A ``.pte`` in ``executorch.runtime``, called like a HF model: ``clf(input_ids=..., attention_mask=...)``
    → logits (B, C) float32. ``threads`` sizes ExecuTorch's thread pool (default ``torch.get_num_threads()``);
    batches larger than the program's batch range (from its manifest) run in chunks."""

    def __init__(self, path: str | Path, input_names: Sequence[str], threads: int | None = None) -> None:
        require("executorch")
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime

        self.path, self.input_names = Path(path), tuple(input_names)
        self.threads = int(threads or torch.get_num_threads())
        portable_lib._unsafe_reset_threadpool(self.threads)
        start = time.perf_counter()
        self.method = Runtime.get().load_program(self.path).load_method("forward")
        self.load_s = time.perf_counter() - start
        meta = manifest_path(self.path)
        self.max_batch = json.loads(meta.read_text())["inputs"][0]["shape"][0][1] if meta.is_file() else None

    def __call__(self, **inputs: Any) -> torch.Tensor:
        tensors = [t.to(torch.long).contiguous() for t in feed(self.input_names, inputs)]  # each (B, T)
        step = self.max_batch or len(tensors[0])
        chunks = [
            self.method.execute([t[i : i + step].contiguous() for t in tensors])[0]
            for i in range(0, len(tensors[0]), step)
        ]
        return torch.cat(chunks)  # (B, C)
