#!/usr/bin/env python
"""Export a trained student: ``python scripts/export.py <run or student dir> --formats hf,int8,onnx``.

Writes ``<dir>/export/`` (or ``--out``): hf-fp32/, hf-fp16/, int8/ (torchao), onnx/model.onnx and
onnx/model.int8.onnx with onnx/parity.json; executorch/, litert/, coreml/ (artifacts, manifests, tokenizer),
each run in its runtime over the dev set and added to the run's report. Mistakes (unknown format, missing
folder or extra) are reported as one line on stderr with exit status 2; an artifact that fails its parity
threshold is kept, marked failed, and the exit status is 1. The wall and CPU seconds of each step are
printed on stderr and written to ``<out>/steps.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.errors import DistillError  # noqa: E402  (light import: no torch)

FORMATS = ("hf", "int8", "onnx", "executorch", "litert", "coreml")  # kept equal to distill.export.FORMATS (checked in tests)
# the edge formats are asked for by name: each is checked in its runtime on the task's dev set (--task)
DEFAULT_FORMATS = ("hf", "int8", "onnx")


def _write_steps(out: Path, steps: list[dict], text: str) -> None:
    """Where the time went (wall and CPU seconds per step): on stderr and in ``<out>/steps.json``."""
    if not steps:
        return
    print(text, file=sys.stderr)
    if out.is_dir():
        (out / "steps.json").write_text(json.dumps(steps, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", help="a run folder (with student/) or a saved student folder")
    parser.add_argument("--formats", default=",".join(DEFAULT_FORMATS),
                        help=f"comma-separated subset of {','.join(FORMATS)} (default {','.join(DEFAULT_FORMATS)})")
    parser.add_argument("--out", default=None, help="output folder (default: <dir>/export)")
    parser.add_argument("--embeddings", action="store_true", help="also quantize embedding tables to int8")
    parser.add_argument("--task", default=None, help="GLUE task of a bare student folder (a run's config says it)")
    parser.add_argument("--data-dir", default=None, help="GLUE folder (default: $DISTILL_DATA_DIR or ../shared/data/glue)")
    args = parser.parse_args(argv)
    try:
        # Validate before importing torch/transformers so mistakes fail fast.
        formats = [f.strip() for f in args.formats.split(",") if f.strip()]
        unknown = [f for f in formats if f not in FORMATS]
        if unknown or not formats:
            what = f"unknown export format {unknown[0]!r}" if unknown else "no export format given"
            raise DistillError(f"{what}; allowed formats: {', '.join(FORMATS)}.")
        if not Path(args.dir).is_dir():
            raise DistillError(f"{args.dir} is not a directory; give a run folder (with student/) or a saved "
                               "student folder.")
        from distill.console import setup_console

        setup_console()  # what a training run prints: named library notices dropped, no progress bars off a terminal
        from distill.export import export
        from distill.export.steps import recording, summary

        with recording() as steps:
            try:
                written = export(args.dir, formats, args.out, embeddings=args.embeddings, task=args.task,
                                 data_dir=args.data_dir)
            finally:
                _write_steps(Path(args.out or Path(args.dir) / "export"), steps, summary(steps))
    except DistillError as e:
        print(f"error: {e}", file=sys.stderr)
        written = getattr(e, "written", None)  # distill.export.edge.ParityFailed: artifacts kept, exit 1
        for name, path in (written or {}).items():
            print(f"{name}: {path}")
        return 1 if written is not None else 2
    for name, path in written.items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
