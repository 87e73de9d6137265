"""ExecuTorch: ``torch.export`` → ``to_edge_transform_and_lower`` (XNNPACK partitioner) → ``.pte``, fp32 and int8,
each with a bundled program (``.bpte``: the program plus a few dev inputs and their expected logits).

int8 is PT2E with the XNNPACK quantizer (int8 per-channel weights × dynamically quantized int8 activations
for every linear layer), calibrated on 32 dev examples, with int8 embedding tables
(:func:`distill.export.edge.int8_embeddings`). The graph is first made XNNPACK-friendly (eager attention,
LayerNorm in delegable ops, reshapes with one inferred size: :mod:`distill.export.executorch_graph`), which
halves batch-1 latency. Inputs are (1, T) int64 with T dynamic in 2..``seq_len``: XNNPACK reshapes take at
most one unknown size, so a dynamic batch as well would leave every attention reshape outside the delegate.
:class:`ExecuTorchClassifier` runs a ``.pte`` in ``executorch.runtime``; :func:`verify_bundled` runs a
``.bpte``'s test cases through ExecuTorch's own bundled-program check, as a device would.
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
    unpadded_length,
    write_manifest,
)
from distill.export.executorch_graph import delegation_summary, infer_one_dim, xnnpack_friendly
from distill.export.onnx import model_input_names

BUNDLE_CASES = 4
MIN_SEQUENCE = 2  # the shortest sequence a program takes ([CLS] [SEP])
CALIBRATION_EXAMPLES = 32  # activations are quantized at run time, so calibration only has to run the graph
# (rtol, atol) of the bundled check against its expected logits. fp32: the fp32 student, at the parity
# threshold. int8: the PT2E-quantized student run in PyTorch (the graph this .pte was lowered from); XNNPACK's
# int8 kernels round differently from PyTorch's reference q/dq ops: 1.6e-2 measured on `tiny` (4 SST-2 dev
# examples), so 5e-2 passes correct kernels and catches broken ones (off by whole logits).
BUNDLE_TOLERANCE: dict[str, tuple[float, float]] = {"fp32": (1e-5, 1e-4), "int8": (1e-2, 5e-2)}


def _dynamic_shapes(n_inputs: int, seq_len: int) -> tuple[dict[int, Any], ...]:
    seq = torch.export.Dim("sequence", min=MIN_SEQUENCE, max=seq_len)
    return ({1: seq},) * n_inputs  # batch stays 1: see the module docstring


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


def dev_cases(
    names: Sequence[str], batches: Sequence[Mapping[str, Any]], n: int, seq_len: int
) -> list[tuple]:
    """Up to ``n`` examples from ``batches``, each (1, its own unpadded length ≤ seq_len), in ``names`` order."""
    cases: list[tuple] = []
    for batch in batches:
        tensors = [t.to(torch.long) for t in feed(names, batch)]
        mask = tensors[names.index("attention_mask")]
        for i in range(len(mask)):
            length = max(2, min(seq_len, int(mask[i].sum())))
            cases.append(tuple(t[i : i + 1, :length].contiguous() for t in tensors))
            if len(cases) == n:
                return cases
    return cases


def write_bundled(
    program: Any, path: Path, cases: Sequence[tuple], reference: nn.Module, tolerance: tuple[float, float]
) -> dict[str, Any]:
    """Write ``path`` (``.bpte``): ``program`` (lowered, or a ``.pte`` path) with ``cases`` as test cases of
    ``forward``, expected outputs from ``reference``; return what the manifest records (file, tolerance,
    expected logits)."""
    from executorch.devtools import BundledProgram
    from executorch.devtools.bundled_program.config import MethodTestCase, MethodTestSuite
    from executorch.devtools.bundled_program.serialize import serialize_from_bundled_program_to_flatbuffer

    with torch.no_grad():
        expected = [reference(*c).detach().float().contiguous() for c in cases]  # each (1, C)
    suite = MethodTestSuite(
        "forward", [MethodTestCase(inputs=list(c), expected_outputs=[e]) for c, e in zip(cases, expected)]
    )
    bundle = (
        BundledProgram(None, [suite], pte_file_path=str(program))
        if isinstance(program, (str, Path))
        else BundledProgram(program, [suite])
    )
    path.write_bytes(serialize_from_bundled_program_to_flatbuffer(bundle))
    return {
        "file": path.name,
        "cases": len(cases),
        "sequence_lengths": [int(c[0].shape[1]) for c in cases],
        "rtol": tolerance[0],
        "atol": tolerance[1],
        "expected_logits": [e[0].tolist() for e in expected],
    }


def verify_bundled(path: str | Path, cases: int, rtol: float, atol: float, expected: Sequence | None = None):
    """Run each test case of a ``.bpte`` in ExecuTorch's bundled-program check (``|out - expected| ≤ atol +
    rtol·|expected|``, as on a device); ``{"passed", "failed_cases", "max_abs_diff"}`` (the diff against
    ``expected`` when given)."""
    require("executorch")
    from executorch.extension.pybindings import portable_lib

    bundle = portable_lib._load_bundled_program_from_buffer(Path(path).read_bytes())
    failed, diff = [], 0.0
    for i in range(cases):
        try:
            outputs = bundle.verify_result_with_bundled_expected_output("forward", i, rtol, atol)
        except RuntimeError:  # the runtime's verdict is only a status; rerun without a bound for the diff
            failed.append(i)
            outputs = bundle.verify_result_with_bundled_expected_output("forward", i, 0.0, float("inf"))
        if expected is not None:
            diff = max(diff, (outputs[0][0] - torch.tensor(expected[i])).abs().max().item())
    return {
        "passed": not failed,
        "failed_cases": failed,
        "max_abs_diff": diff if expected is not None else None,
    }


def export_executorch(
    model: nn.Module,
    path: str | Path,
    precision: str = "fp32",
    seq_len: int = 128,
    calibration: Sequence[Mapping[str, Any]] | None = None,
    source: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``path`` (a ``.pte``), its bundled program (``.bpte``, checked here) and its manifest;
    ``precision`` ``fp32`` or ``int8`` (PT2E, calibrated on ``calibration`` batches, random ones when None;
    the first dev examples are the bundled test cases). Inputs (1, T) int64, T in 2..seq_len."""
    require("executorch")
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = model_input_names(model)
    base = int8_embeddings(model) if precision == "int8" else model
    module = LogitsModule(xnnpack_friendly(base, inplace=precision == "int8"), names).eval()
    example = example_inputs(model, 1, min(16, seq_len))
    dynamic = _dynamic_shapes(len(names), seq_len)
    cases = dev_cases(names, calibration or [], BUNDLE_CASES, seq_len) or [example]
    reference: nn.Module = LogitsModule(model.eval(), names).eval()
    if precision == "int8":
        # one example at a time, unpadded: the program's batch is 1
        batches = dev_cases(names, calibration or [], CALIBRATION_EXAMPLES, seq_len) or [example]
        module = reference = _quantize_pt2e(module, example, dynamic, batches)
    program = torch.export.export(module, example, dynamic_shapes=dynamic)
    edge = to_edge_transform_and_lower(
        program, transform_passes=[infer_one_dim], partitioner=[XnnpackPartitioner()]
    )
    delegation = delegation_summary(edge)
    lowered = edge.to_executorch()
    path.write_bytes(lowered.buffer)
    bundled = write_bundled(lowered, path.with_suffix(".bpte"), cases, reference, BUNDLE_TOLERANCE[precision])
    bundled["expected_from"] = (
        "the PT2E-quantized student in PyTorch" if precision == "int8" else "the fp32 PyTorch student"
    )
    bundled["check_here"] = verify_bundled(
        path.with_suffix(".bpte"), len(cases), bundled["rtol"], bundled["atol"], bundled["expected_logits"]
    )
    inputs = [{"name": n, "dtype": "int64", "shape": [1, [2, seq_len]]} for n in names]
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
            delegation=delegation,
            bundled_program=bundled,
        ),
    )
    return path


class ExecuTorchClassifier:
    """A ``.pte`` in ``executorch.runtime``, called like a HF model: ``clf(input_ids=..., attention_mask=...)``
    → logits (B, C) float32. ``threads`` sizes ExecuTorch's thread pool (default ``torch.get_num_threads()``);
    batches larger than the program's batch size (from its manifest) run in chunks."""

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
        batch = json.loads(meta.read_text())["inputs"][0]["shape"][0] if meta.is_file() else None
        self.max_batch = batch[1] if isinstance(batch, list) else batch

    def __call__(self, **inputs: Any) -> torch.Tensor:
        tensors = [t.to(torch.long).contiguous() for t in feed(self.input_names, inputs)]  # each (B, T)
        if self.max_batch != 1:  # a program with a batch range (older exports): chunks of at most max_batch
            step = self.max_batch or len(tensors[0])
            chunks = [
                self.method.execute([t[i : i + step].contiguous() for t in tensors])[0]
                for i in range(0, len(tensors[0]), step)
            ]
            return torch.cat(chunks)  # (B, C)
        mask = tensors[self.input_names.index("attention_mask")]
        rows = []
        for i in range(len(mask)):  # one example at a time at its own length, as on a device
            length = unpadded_length(mask[i], MIN_SEQUENCE)
            rows.append(self.method.execute([t[i : i + 1, :length].contiguous() for t in tensors])[0])
        return torch.cat(rows)  # (B, C)
