#!/usr/bin/env python
"""Compare two finished runs: ``python scripts/compare_runs.py <run A> <run B>``.

Prints, for each model of the runs' ``report.json`` (old and new layouts alike), the two dev metrics, and
for the two saved students the largest absolute difference over every weight tensor (0.0: identical
training). Exit status 1 when the scores or the student weights differ. Used to show that a refactor keeps
the same seed's figures (docs/benchmarks/pipeline_equivalence.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safetensors.torch import load_file


def _scores(run: Path) -> dict[str, float]:
    report = json.loads((run / "report.json").read_text())
    return {row["model"]: row["score"] for row in report["models"]}


def _weights_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(str(a / "student" / "model.safetensors")), load_file(str(b / "student" / "model.safetensors"))
    if wa.keys() != wb.keys():
        return float("inf")
    return max(float((wa[k].double() - wb[k].double()).abs().max()) if wa[k].numel() else 0.0 for k in wa)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args(argv)
    sa, sb = _scores(args.run_a), _scores(args.run_b)
    same = True
    for model in sorted(set(sa) | set(sb)):
        print(f"{model:10s} {sa.get(model)!s:>22s} {sb.get(model)!s:>22s}")
        same &= sa.get(model) == sb.get(model)
    diff = _weights_diff(args.run_a, args.run_b)
    print(f"student weights: max |difference| {diff:.3g}")
    return 0 if same and diff == 0.0 else 1


if __name__ == "__main__":
    sys.exit(main())
