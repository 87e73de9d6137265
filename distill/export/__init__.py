"""Export a trained student: Hugging Face fp32/fp16, torchao int8, ONNX fp32 + onnxruntime int8.

``export(run_dir)`` reads ``run_dir/student`` (or a student folder itself) and writes ``run_dir/export/``::

    export/hf-fp32/  export/hf-fp16/     save_pretrained folders + tokenizer
    export/int8/                         torchao int8 (load with distill.quant.load_int8)
    export/onnx/model.onnx               fp32 ONNX, dynamic batch/sequence axes
    export/onnx/model.int8.onnx          onnxruntime dynamic int8
    export/onnx/parity.json              ONNX vs PyTorch on random padded batches
    export/executorch/model-{fp32,int8}.pte      ExecuTorch (XNNPACK) + manifest .json + tokenizer
    export/litert/model-{fp32,int8}.tflite       LiteRT, fixed batch 1 x seq_len + manifest + tokenizer
    export/coreml/model-{fp16,int8}.mlpackage    Core ML ML program + manifest + tokenizer

The edge formats (executorch, litert, coreml) are also run in their runtimes over the task's dev set and
added as rows of the run's report (:mod:`distill.export.run_report`); an artifact that fails its parity
threshold is kept, marked failed, and :class:`~distill.export.edge.ParityFailed` is raised at the end.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from distill.errors import ConfigError, DataError

FORMATS = ("hf", "int8", "onnx", "executorch", "litert", "coreml")
EDGE_FORMATS = ("executorch", "litert", "coreml")
DEFAULT_FORMATS = ("hf", "int8", "onnx")  # edge formats are asked for by name (each runs over the dev set)


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """``"hf,int8"`` or ``["hf", "int8"]`` → a checked tuple; a ``ConfigError`` names the allowed formats."""
    items = [f.strip() for f in (formats.split(",") if isinstance(formats, str) else formats) if f.strip()]
    unknown = [f for f in items if f not in FORMATS]
    if unknown or not items:
        what = f"unknown export format {unknown[0]!r}" if unknown else "no export format given"
        raise ConfigError(f"{what}; allowed formats: {', '.join(FORMATS)}.")
    return tuple(dict.fromkeys(items))


def resolve_student_dir(path: str | Path) -> Path:
    """A run folder (holding ``student/``) or a saved student folder (holding ``config.json``) → the student folder."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path} is not a directory; give a run folder (with student/) or a saved student folder.")
    for candidate in (path / "student", path):
        weights = [*candidate.glob("*.safetensors"), *candidate.glob("*.bin")]
        if (candidate / "config.json").is_file() and weights:
            return candidate
    raise DataError(f"{path} holds no saved student: expected student/config.json with weights, or config.json "
                    "with weights in the folder itself.")


def export(path: str | Path, formats: str | Iterable[str] = DEFAULT_FORMATS, out_dir: str | Path | None = None,
           embeddings: bool = False, task: str | None = None, data_dir: str | None = None) -> dict[str, str]:
    """Export the student of a run folder (or a student folder) in each format; return ``{name: path}``.

    ``out_dir`` defaults to ``<run>/export`` (or ``<student>/export`` for a bare student folder).
    ``embeddings`` also quantizes the embedding tables in the int8 formats (the edge int8 formats always do).
    ``task`` / ``data_dir``: the dev data for the edge formats' checks when ``path`` has no run config.
    """
    from distill.export.steps import step

    formats = parse_formats(formats)
    student_dir = resolve_student_dir(path)
    with step("load the student (imports torch, transformers)"):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        model = AutoModelForSequenceClassification.from_pretrained(student_dir).eval()
        try:
            tokenizer = AutoTokenizer.from_pretrained(student_dir)
        except (OSError, ValueError):
            tokenizer = None
    base = Path(path)
    out = Path(out_dir) if out_dir is not None else base / "export"
    written: dict[str, str] = {}
    if "hf" in formats:
        from distill.export.hf import export_hf

        with step("hf: fp32 + fp16 folders"):
            written.update({k: str(v) for k, v in export_hf(model, out, tokenizer).items()})
    if "int8" in formats:
        with step("int8: torchao dynamic int8"):
            from distill.export.int8 import export_int8

            written["int8"] = str(export_int8(model, out / "int8", tokenizer, embeddings=embeddings))
    if "onnx" in formats:
        with step("onnx: export + onnxruntime int8 + parity"):
            from distill.export.onnx import export_onnx_with_int8

            fp32, int8, parity = export_onnx_with_int8(model, out / "onnx", embeddings=embeddings)
            (out / "onnx" / "parity.json").write_text(json.dumps(parity, indent=2))
            if tokenizer is not None:
                tokenizer.save_pretrained(out / "onnx")
        written.update({"onnx": str(fp32), "onnx-int8": str(int8)})
    edge = tuple(f for f in formats if f in EDGE_FORMATS)
    if edge:
        written.update(_export_edge(student_dir, edge, out, model, tokenizer, task, data_dir))
    return written


def _export_edge(student_dir: Path, formats: tuple[str, ...], out: Path, model, tokenizer,
                 task: str | None, data_dir: str | None) -> dict[str, str]:
    from distill.export.edge import ParityFailed
    from distill.export.run_report import export_edge

    result = export_edge(student_dir, formats, out, model, tokenizer, task, data_dir)
    written = result["written"]
    if result["failed"]:
        names = ", ".join(f"{r['model']} (max |Δlogit| {r['parity']['max_abs_logit_diff']:.2e}, agreement "
                          f"{r['parity']['agreement']:.2%})" for r in result["failed"])
        raise ParityFailed(f"{names} failed the parity threshold against the PyTorch student; the artifacts are "
                           "kept and marked failed in their manifests and the report.", written)
    return written


__all__ = ["DEFAULT_FORMATS", "EDGE_FORMATS", "FORMATS", "export", "parse_formats", "resolve_student_dir"]
