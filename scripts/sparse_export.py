#!/usr/bin/env python
"""Store a finished run's student sparsely and add the row to its report: ``python scripts/sparse_export.py <run>``.

Writes ``<run>/export/sparse/`` (``model.sparse.safetensors``: each tensor with enough zeros as a 1-bit mask plus
its non-zero values, ``config.json``, the tokenizer; load it back with
``distill.prune.sparse_export.load_sparse``), scores and times it over the task's dev set and adds the
``student_sparse`` row to ``<run>/report.{json,md,png}``; rows without the ``geometry`` / ``sparsity`` columns get
them. ``python train.py +prune=magnitude`` does the same at the end of training (into ``compression/sparse/``).
Mistakes (no such run, no student) are one line on stderr with exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.errors import DistillError  # noqa: E402  (light import: no torch)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="a finished run folder (with student/ and report.json)")
    parser.add_argument("--task", default=None, help="GLUE task, when the run has no .hydra/config.yaml")
    parser.add_argument("--data-dir", default=None, help="GLUE folder (default: $DISTILL_DATA_DIR or ../shared/data/glue)")
    args = parser.parse_args(argv)
    try:
        if not args.dir.is_dir():
            raise DistillError(f"{args.dir} is not a directory; give a finished run folder (with student/).")
        from distill.prune.sparse_report import sparse_report
        from distill.report.render import format_table, sparsity_note

        done = sparse_report(args.dir, args.data_dir, args.task)
    except DistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_table(done["report"]))
    print(f"\n{sparsity_note(done['report']) or ''}")
    for name, path in done["written"].items():
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
