"""distill.report.results and scripts/collect_results.py on hand-made run folders (no training)."""

import json
import math
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import ROOT

from distill.report.results import (
    DONE,
    INCOMPLETE,
    collect,
    find_run_dirs,
    load_runs,
    parse_overrides,
    to_frame,
    to_markdown,
)


def _row(model, score, teacher_score=0.9, **extra):
    row = {"model": model, "metric": "accuracy", "score": score, "metrics": {"accuracy": score},
           "parameters": 4_000_000 if model == "student" else 22_000_000,
           "size_mb": 16.0 if model == "student" else 90.0, "path": f"/x/{model}"}
    if model == "student":
        row.update(retention=score / teacher_score, compression_size=90.0 / 16.0)
    return {**row, **extra}


def make_job(root, name, overrides, student=None, compression=None, num=None, variants=()):
    """A run folder; ``variants``: extra rows of report.json (the schema), ``compression``: an older run's
    separate compression.json."""
    job = root / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"loss": {"temperature": 2.0}}))
    if num is not None:
        (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
    if student is not None:
        report = {"models": [_row("teacher", 0.9), _row("student", student, latency_ms=1.5), *variants],
                  "task": "sst2", "split": "dev", "eval_examples": 872}
        (job / "report.json").write_text(json.dumps(report))
    if compression is not None:
        (job / "compression.json").write_text(json.dumps({"models": compression}))
    return job


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "multirun"
    base = ["data.max_train_samples=500", "hparams_search=optuna_sst2"]
    make_job(root, "0", [*base, "loss.temperature=1.5", "optimizer.lr=1e-4"], student=0.80, num=0)
    make_job(root, "1", [*base, "loss.temperature=4", "optimizer.lr=3e-4"], student=0.85, num=1,
             variants=[_row("student_int8_ptq", 0.84, size_mb=4.5, latency_ms=0.7, latency_p90_ms=0.9,
                            parity={"reference": "student", "max_abs_logit_diff": 0.01, "agreement": 0.98})])
    make_job(root, "2", [*base, "loss.temperature=8", "optimizer.lr=5e-5"], student=None, num=2)  # killed
    make_job(root, "10", [*base, "loss.temperature=2", "optimizer.lr=1e-4"], student=0.70, num=10,
             compression=[_row("teacher", 0.9), _row("student_fp32", 0.70),  # a run made before the one schema
                          _row("student_int8_qat", 0.69, size_mb=4.4, latency_ms=0.6)])
    (root / "multirun.yaml").write_text("{}")
    (root / "optimization_results.yaml").write_text(yaml.safe_dump(
        {"name": "optuna", "best_params": {"loss.temperature": 4.0, "optimizer.lr": 3e-4}, "best_value": 0.85}))
    return root


def test_parse_overrides():
    assert parse_overrides(["loss.temperature=2", "optimizer.lr=1e-4", "+x.y=3.5", "student=tiny", "~z",
                            "a=nan"]) == {"loss.temperature": 2, "optimizer.lr": 1e-4, "x.y": 3.5, "student": "tiny",
                                          "z": None, "a": "nan"}
    assert parse_overrides(None) == {}


def test_load_runs_orders_jobs_and_marks_unfinished(sweep):
    runs = load_runs(sweep)
    assert [r["job"] for r in runs] == [0, 1, 2, 10]  # numeric, not lexical
    assert [r["status"] for r in runs] == [DONE, DONE, INCOMPLETE, DONE]
    assert runs[1]["report"]["models"][2]["model"] == "student_int8_ptq" and runs[1]["compression"] is None
    assert runs[3]["compression"]["models"][2]["model"] == "student_int8_qat"
    assert runs[0]["config"]["loss"]["temperature"] == 2.0
    assert find_run_dirs(sweep / "1") == [sweep / "1"]  # a single run folder is a run too
    assert [r["name"] for r in load_runs(sweep.parent)] == ["multirun/0", "multirun/1", "multirun/2", "multirun/10"]
    with pytest.raises(FileNotFoundError):
        load_runs(sweep / "missing")


def test_frame_is_sorted_by_student_score_with_unfinished_last(sweep):
    frame = to_frame(load_runs(sweep))
    assert list(frame["job"]) == [1, 0, 10, 2]
    assert list(frame["status"]) == [DONE, DONE, DONE, INCOMPLETE]
    assert math.isnan(frame["student_score"].iloc[-1])
    assert frame["loss.temperature"].tolist() == [4, 1.5, 2, 8]
    assert frame.loc[0, "student_retention"] == pytest.approx(0.85 / 0.9)
    assert frame.loc[0, "student_int8_ptq_score"] == 0.84 and frame.loc[0, "student_int8_ptq_size_mb"] == 4.5
    assert frame.loc[0, "student_int8_ptq_latency_p90_ms"] == 0.9 and frame.loc[0, "student_int8_ptq_agreement"] == 0.98
    assert frame.loc[2, "student_int8_qat_score"] == 0.69  # read from an older run's compression.json
    assert "student_fp32_score" not in frame  # same model as report.json's student
    assert frame.attrs["overrides"] == ["data.max_train_samples", "hparams_search", "loss.temperature",
                                        "optimizer.lr"]
    assert to_frame([]).empty


def test_markdown_lists_varying_overrides_metrics_and_failures(sweep):
    frame = to_frame(load_runs(sweep))
    text = to_markdown(frame, title="Sweep", notes=["Command: x"],
                       summary={"best_params": {"loss.temperature": 4.0}, "best_value": 0.85})
    lines = text.splitlines()
    assert lines[:4] == ["# Sweep", "", "Command: x", ""]
    assert "4 runs (3 finished, 1 failed or unfinished); scores are dev `accuracy` on sst2" in text
    assert "Same in every run: `data.max_train_samples=500`, `hparams_search=optuna_sst2`" in text
    assert "Optuna best: 0.8500 with `loss.temperature=4`" in text
    header = next(line for line in lines if line.startswith("| job"))
    assert header == ("| job | status | loss.temperature | optimizer.lr | teacher | student | retention | params | "
                      "size MB | size ÷ | ms @b1 | student_int8_ptq | student_int8_ptq MB | student_int8_ptq ms | "
                      "student_int8_qat | student_int8_qat MB | student_int8_qat ms |")
    body = [line for line in lines if line.startswith("| ") and line != header]
    assert body[0].startswith("| 1 | done | 4 | 0.0003 | 0.9000 | 0.8500 | 94.4% | 4,000,000 | 16.00 | 5.6x | 1.50 |")
    assert body[-1].startswith("| 2 | failed/unfinished | 8 | 5e-05 | – | – |")
    assert to_markdown(pd.DataFrame()).strip() == "No runs found."


def test_collect_results_script_writes_markdown_and_csv(sweep, tmp_path):
    out = tmp_path / "docs" / "table.md"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "collect_results.py"), str(sweep), "--out", str(out),
                           "--title", "T", "--note", "Date: 2026-11-27"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == out.read_text() and out.read_text().startswith("# T\n\nDate: 2026-11-27\n")
    table = pd.read_csv(out.with_suffix(".csv"), dtype={"path": str})
    assert table["job"].tolist() == [1, 0, 10, 2] and table["path"].tolist() == ["1", "0", "10", "2"]
    frame, text = collect(sweep)  # defaults: into the sweep folder
    assert (sweep / "results.md").read_text() == text and (sweep / "results.csv").is_file()


def test_collect_results_script_refuses_empty_folder(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "collect_results.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no run folders" in proc.stderr
