"""Readers for the original GLUE TSV layouts (``SST-2/train.tsv`` ...), with file:line errors."""

from __future__ import annotations

import csv
from pathlib import Path

from distill.data.tasks import TaskSpec
from distill.errors import DataError

csv.field_size_limit(10_000_000)


def task_file(data_dir: str | Path, task: TaskSpec, split: str) -> Path:
    """Path of ``<data_dir>/<TaskFolder>/<split>.tsv``; raise ``DataError`` if the folder or file is missing."""
    root = Path(data_dir).expanduser()
    folder = root / task.folder
    if not folder.is_dir():
        raise DataError(
            f"data.data_dir={str(root)!r} has no {task.folder}/ folder for task {task.name!r}; "
            f"point data.data_dir at a folder holding GLUE task folders (e.g. ../shared/data/glue) "
            f"or set data.source=hub."
        )
    path = folder / f"{split}.tsv"
    if not path.is_file():
        raise DataError(f"GLUE file {path} is missing; task {task.name!r} needs {split}.tsv in {folder}.")
    return path


def read_glue_tsv(path: str | Path, task: TaskSpec) -> dict[str, list]:
    """Read one GLUE TSV into columns ``text_a``, ``text_b`` (pair tasks) and ``label``.

    Labels are class ids (int) for classification and floats for regression. A row with too few
    columns, an unknown label or a non-numeric score raises ``DataError`` naming the file and line.
    """
    path = Path(path)
    n_text = len(task.text_columns)
    out: dict[str, list] = {"text_a": [], "label": []}
    if n_text == 2:
        out["text_b"] = []
    label_ids = None if task.label_names is None else {name: i for i, name in enumerate(task.label_names)}
    with path.open(encoding="utf-8-sig", newline="") as fh:
        reader = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        if task.has_header:
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}:1: the file is empty; expected a header row.")
            missing = [c for c in (*task.text_columns, task.label_column) if c not in header]
            if missing:
                raise DataError(f"{path}:1: header lacks column(s) {missing}; found {header}.")
            cols = [header.index(c) for c in task.text_columns]
            label_col = header.index(task.label_column)
            first_line = 2
        else:
            cols = [task.positional[c] for c in task.text_columns]
            label_col = task.positional[task.label_column]
            first_line = 1
        need = max(*cols, label_col) + 1
        for lineno, row in enumerate(reader, start=first_line):
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) < need:
                raise DataError(f"{path}:{lineno}: malformed row with {len(row)} column(s); expected at least {need}.")
            raw = row[label_col].strip()
            if label_ids is None:
                try:
                    label: float | int = float(raw)
                except ValueError:
                    raise DataError(f"{path}:{lineno}: score {raw!r} is not a number.") from None
            elif raw in label_ids:
                label = label_ids[raw]
            else:
                raise DataError(f"{path}:{lineno}: label {raw!r} is not one of {list(label_ids)}.")
            out["text_a"].append(row[cols[0]])
            if n_text == 2:
                out["text_b"].append(row[cols[1]])
            out["label"].append(label)
    if not out["label"]:
        raise DataError(f"{path}: no data rows found.")
    return out
