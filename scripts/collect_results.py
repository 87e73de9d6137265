"""Tabulate the runs of a sweep (or any folder of runs): one row per job, sorted by the student's score.

    python scripts/collect_results.py outputs/multirun/2026-11-27_10-00-00
    python scripts/collect_results.py outputs/multirun/<time> --out docs/sweeps/x.md --csv docs/sweeps/x.csv

Reads each job folder's .hydra/overrides.yaml and report.json (and an older run's compression.json); jobs without
report.json are listed as failed/unfinished. Prints the markdown table and writes it (default
<dir>/results.md) and the CSV (default: next to the markdown, .csv).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from distill.report.results import collect, find_run_dirs  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="a multirun folder (outputs/multirun/<time>), a run folder, or outputs/")
    parser.add_argument("--out", type=Path, help="markdown file to write (default: <dir>/results.md)")
    parser.add_argument("--csv", type=Path, help="CSV file to write (default: the --out path with .csv)")
    parser.add_argument("--title", help="a heading for the markdown file")
    parser.add_argument("--note", action="append", default=[],
                        help="a line written above the table (repeatable), e.g. the command, date, hardware")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        print(f"error: {args.dir} is not a folder", file=sys.stderr)
        return 2
    if not find_run_dirs(args.dir):
        print(f"error: no run folders (with .hydra/overrides.yaml) under {args.dir}", file=sys.stderr)
        return 2
    out = args.out or args.dir / "results.md"
    csv = args.csv or out.with_suffix(".csv")
    _, text = collect(args.dir, out, csv, title=args.title, notes=args.note)
    print(text, end="")
    print(f"\nwrote {out} and {csv}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
