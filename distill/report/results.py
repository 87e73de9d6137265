"""Collect the results of runs and sweeps: one row per run folder, as a pandas frame, markdown or CSV.

A *run folder* is one that Hydra made for a job: it holds ``.hydra/overrides.yaml`` and, once the run has
finished, ``report.json`` with one row per model (teacher, student and any int8 / ONNX variants; schema in
:mod:`distill.report.rows`). Quantized runs made before that schema kept their variants in a separate
``compression.json``; it is still read for them. A multirun folder
(``outputs/multirun/<time>``) holds one run folder per job (``0/``, ``1/``, ...); a plain run folder or any
folder above several runs works too.

    runs = load_runs("outputs/multirun/2026-11-27_10-00-00")
    frame = to_frame(runs)              # sorted by the student's score, unfinished runs last
    print(to_markdown(frame))
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

DONE, INCOMPLETE = "done", "failed/unfinished"
# per-model fields of report.json rows that go into the table
MODEL_FIELDS = ("score", "retention", "parameters", "sparsity", "size_mb", "latency_ms", "latency_p90_ms", "throughput_eps",
                "compression_size", "speedup_latency")
# columns of the markdown table after the overrides: (column, header, format)
TABLE_COLUMNS = [
    ("teacher_score", "teacher", "{:.4f}"),
    ("student_score", "student", "{:.4f}"),
    ("student_retention", "retention", "{:.1%}"),
    ("student_parameters", "params", "{:,.0f}"),
    ("student_size_mb", "size MB", "{:.2f}"),
    ("student_compression_size", "size ÷", "{:.1f}x"),
    ("student_latency_ms", "ms @b1", "{:.2f}"),
    ("student_speedup_latency", "speed-up", "{:.1f}x"),
]


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None


def _number(value: str) -> Any:
    """An override's value as int or float when it is one, else the text."""
    for kind in (int, float):
        try:
            number = kind(value)
        except ValueError:
            continue
        return number if math.isfinite(number) else value
    return value


def parse_overrides(lines: list[str] | None) -> dict[str, Any]:
    """``["loss.temperature=2", "+x=1"]`` → ``{"loss.temperature": 2, "x": 1}`` (numbers as numbers)."""
    out: dict[str, Any] = {}
    for line in lines or []:
        key, sep, value = str(line).partition("=")
        key = key.lstrip("+~")
        if not sep:
            out[key] = None  # ~key (deletion)
            continue
        out[key] = _number(value)
    return out


def _job_sort_key(path: Path, root: Path) -> tuple:
    rel = path.relative_to(root).parts if path != root else ()
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in rel)


def find_run_dirs(root: str | Path) -> list[Path]:
    """Run folders at or below ``root`` (those with ``.hydra/overrides.yaml``), in job order."""
    root = Path(root)
    dirs = {p.parent.parent for p in root.glob("**/.hydra/overrides.yaml")}
    return sorted(dirs, key=lambda p: _job_sort_key(p, root))


def load_run(path: str | Path, root: str | Path | None = None) -> dict[str, Any]:
    """One run folder: its job name, overrides, status, report, config (and an older run's compression.json)."""
    path = Path(path)
    root = Path(root) if root is not None else path.parent
    report = _read_json(path / "report.json")
    hydra_cfg = _read_yaml(path / ".hydra" / "hydra.yaml") or {}
    job = ((hydra_cfg.get("hydra") or {}).get("job") or {}).get("num") if isinstance(hydra_cfg, dict) else None
    rel = str(path.relative_to(root)) if path != root and path.is_relative_to(root) else path.name
    return {
        "job": job if isinstance(job, int) else rel,
        "name": rel,
        "path": str(path.resolve()),
        "status": DONE if report is not None else INCOMPLETE,
        "overrides": parse_overrides(_read_yaml(path / ".hydra" / "overrides.yaml")),
        "report": report,
        "compression": _read_json(path / "compression.json"),
        "config": _read_yaml(path / ".hydra" / "config.yaml"),
    }


def load_runs(root: str | Path) -> list[dict[str, Any]]:
    """Every run folder at or below ``root`` (a run, a multirun folder, or ``outputs/``), in job order."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    return [load_run(d, root) for d in find_run_dirs(root)]


def load_sweep_summary(root: str | Path) -> dict[str, Any] | None:
    """Optuna's ``optimization_results.yaml`` (best params and value) of a multirun folder, if any."""
    found = _read_yaml(Path(root) / "optimization_results.yaml")
    return found if isinstance(found, dict) else None


def _model_rows(report: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    return {r["model"]: r for r in (report or {}).get("models", []) if isinstance(r, dict) and "model" in r}


def run_row(run: dict[str, Any]) -> dict[str, Any]:
    """Flat row of one run: job, status, each override, then per-model metrics (``<model>_<field>``)."""
    row: dict[str, Any] = {"job": run["job"], "status": run["status"]}
    row.update(run["overrides"])
    models = _model_rows(run["report"])
    if models:
        row["metric"] = next(iter(models.values())).get("metric")
    for name, entry in models.items():
        for field in MODEL_FIELDS:
            if entry.get(field) is not None:
                row[f"{name}_{field}"] = entry[field]
        if (entry.get("parity") or {}).get("agreement") is not None:
            row[f"{name}_agreement"] = entry["parity"]["agreement"]
    # older quantized runs: their variants in compression.json (student_fp32 there is report.json's student)
    for name, entry in _model_rows(run["compression"]).items():
        if name in models or name == "student_fp32":
            continue
        for field in ("score", "retention", "size_mb", "latency_ms", "compression_size", "speedup_latency"):
            if entry.get(field) is not None:
                row[f"{name}_{field}"] = entry[field]
    report = run["report"] or {}
    for key in ("task", "split", "eval_examples", "train_examples"):
        if report.get(key) is not None:
            row[key] = report[key]
    row["path"] = run["path"]
    return row


def to_frame(runs: list[dict[str, Any]], sort_by: str = "student_score") -> pd.DataFrame:
    """A frame with one row per run, sorted by ``sort_by`` (best first); unfinished runs last."""
    frame = pd.DataFrame([run_row(r) for r in runs])
    if frame.empty:
        return frame
    if sort_by not in frame:
        frame[sort_by] = float("nan")
    frame["_order"] = range(len(frame))
    frame = frame.sort_values([sort_by, "_order"], ascending=[False, True], na_position="last", kind="stable")
    frame = frame.drop(columns="_order").reset_index(drop=True)
    frame.attrs["overrides"] = list(dict.fromkeys(k for r in runs for k in r["overrides"]))
    return frame


def override_columns(frame: pd.DataFrame) -> list[str]:
    """Columns of ``frame`` that came from overrides (in first-seen order)."""
    return [c for c in frame.attrs.get("overrides", []) if c in frame]


def split_overrides(frame: pd.DataFrame, columns: list[str]) -> tuple[list[str], dict[str, Any]]:
    """(overrides that vary between runs, {override: value} of those that are the same in all)."""
    varying, constant = [], {}
    for col in columns:
        values = frame[col].dropna().unique() if col in frame else []
        if len(values) == 1 and frame[col].notna().all():
            constant[col] = values[0]
        else:
            varying.append(col)
    return varying, constant


def _fmt(value: Any, spec: str = "{}") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and spec == "{}":
        return f"{value:.4g}"
    try:
        return spec.format(value)
    except (ValueError, TypeError):
        return str(value)


def to_markdown(frame: pd.DataFrame, title: str | None = None,
                notes: list[str] | None = None, summary: dict[str, Any] | None = None) -> str:
    """A markdown table: job, status, the overrides that vary, then teacher/student scores and size/latency.

    Overrides shared by every run are listed above the table; every other model row (int8, ONNX variants)
    gets its own score / size / latency columns.
    """
    lines = [f"# {title}", ""] if title else []
    lines += [*(notes or [])] + ([""] if notes else [])
    if frame.empty:
        return "\n".join(lines + ["No runs found."]) + "\n"
    varying, constant = split_overrides(frame, override_columns(frame))
    done = int((frame["status"] == DONE).sum())
    metric = frame["metric"].dropna().iloc[0] if "metric" in frame and frame["metric"].notna().any() else "score"
    task = frame["task"].dropna().iloc[0] if "task" in frame and frame["task"].notna().any() else None
    lines.append(f"{len(frame)} runs ({done} finished, {len(frame) - done} failed or unfinished); "
                 f"scores are dev `{metric}`{f' on {task}' if task else ''}, sorted by the student's score.")
    if constant:
        lines += ["", "Same in every run: " + ", ".join(f"`{k}={_fmt(v)}`" for k, v in constant.items())]
    if summary and summary.get("best_params") is not None:
        best = ", ".join(f"`{k}={_fmt(v)}`" for k, v in summary["best_params"].items())
        lines += ["", f"Optuna best: {_fmt(summary.get('best_value'), '{:.4f}')} with {best}"]
    cols = [(c, h, f) for c, h, f in TABLE_COLUMNS if c in frame and frame[c].notna().any()]
    variants = sorted({c.removesuffix("_score") for c in frame.columns if c.endswith("_score")} -
                      {"teacher", "student"})
    for name in variants:
        for field, header, spec in (("score", "", "{:.4f}"), ("size_mb", " MB", "{:.2f}"),
                                    ("latency_ms", " ms", "{:.2f}")):
            col = f"{name}_{field}"
            if col in frame and frame[col].notna().any():
                cols.append((col, f"{name}{header}", spec))
    header = ["job", "status", *varying, *(h for _, h, _ in cols)]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for _, row in frame.iterrows():
        cells = [_fmt(row["job"]), str(row["status"]), *(_fmt(row.get(c)) for c in varying),
                 *(_fmt(row.get(c), spec) for c, _, spec in cols)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def collect(root: str | Path, out: str | Path | None = None, csv: str | Path | None = None,
            title: str | None = None, notes: list[str] | None = None) -> tuple[pd.DataFrame, str]:
    """Load every run under ``root``, write the markdown table (default ``<root>/results.md``) and the CSV
    (default next to the markdown), and return (frame, markdown)."""
    root = Path(root)
    runs = load_runs(root)
    frame = to_frame(runs)
    text = to_markdown(frame, title=title, notes=notes, summary=load_sweep_summary(root))
    out = Path(out) if out else root / "results.md"
    csv = Path(csv) if csv else out.with_suffix(".csv")
    for path in (out, csv):
        path.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    table = frame.copy()
    if "path" in table:  # relative to the collected folder, so the CSV can travel with it
        table["path"] = [Path(p).relative_to(root.resolve()).as_posix() if Path(p).is_relative_to(root.resolve())
                         else p for p in table["path"]]
    table.to_csv(csv, index=False)
    return frame, text
