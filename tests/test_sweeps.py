"""Sweeps through the CLI: a grid multirun and an Optuna search (offline), tabulated by collect_results.py."""

import csv
import subprocess
import sys

import pytest
import yaml
from conftest import ROOT, compose_cfg, fast_overrides, run_cli
from omegaconf import OmegaConf

COLLECT = ROOT / "scripts" / "collect_results.py"


def _collect(sweep, *args):
    proc = subprocess.run([sys.executable, str(COLLECT), str(sweep), *args], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_default_sweep_dir_is_outputs_multirun_time_job(tmp_path):
    sweep = OmegaConf.to_container(compose_cfg([], tmp_path).hydra.sweep, resolve=False)
    assert sweep == {"dir": "${paths.log_dir}/multirun/${now:%Y-%m-%d_%H-%M-%S}", "subdir": "${hydra.job.num}"}


def test_grid_multirun_and_collect_results(tiny_sweep):
    jobs = sorted(p.name for p in tiny_sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"]
    temps = [yaml.safe_load((tiny_sweep / j / ".hydra" / "overrides.yaml").read_text())[-1] for j in jobs]
    assert temps == ["loss.temperature=1", "loss.temperature=4"]
    assert all((tiny_sweep / j / "report.json").is_file() for j in jobs)

    printed = _collect(tiny_sweep)
    table = (tiny_sweep / "results.md").read_text()
    assert printed == table
    assert "| job | status | loss.temperature | teacher | student | retention |" in table
    assert "Same in every run:" in table and "`student=micro`" in table
    with open(tiny_sweep / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 and {r["loss.temperature"] for r in rows} == {"1", "4"}
    assert {"job", "status", "teacher_score", "student_score", "student_retention", "student_size_mb",
            "student_parameters", "path"} <= set(rows[0])
    scores = [float(r["student_score"]) for r in rows]
    assert scores == sorted(scores, reverse=True) and all(r["status"] == "done" for r in rows)
    assert {r["path"] for r in rows} == {"0", "1"}  # relative to the sweep folder


@pytest.mark.slow
def test_optuna_sweep_runs_offline(glue_dir, tiny_teacher, tmp_path):
    sweep = tmp_path / "optuna"
    proc = run_cli(["-m", "hparams_search=optuna_sst2", "hydra.sweeper.n_trials=2",
                    *fast_overrides(glue_dir, tiny_teacher, tmp_path / "cache"), f"hydra.sweep.dir={sweep}",
                    "logger=csv", "measure_speed=false"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["name"] == "optuna"
    assert set(best["best_params"]) == {"loss.temperature", "loss.alpha", "optimizer.lr", "scheduler.warmup_ratio"}
    assert 0 <= best["best_value"] <= 1
    for job in ("0", "1"):
        overrides = yaml.safe_load((sweep / job / ".hydra" / "overrides.yaml").read_text())
        assert any(o.startswith("loss.temperature=") for o in overrides)
        assert (sweep / job / "report.json").is_file()
    assert not (sweep / "2").exists()

    table = _collect(sweep, "--out", str(tmp_path / "t.md"))
    assert (tmp_path / "t.csv").is_file() and "Optuna best:" in table
    header = next(line for line in table.splitlines() if line.startswith("| job"))
    for column in ("loss.temperature", "loss.alpha", "optimizer.lr", "scheduler.warmup_ratio", "student"):
        assert f" {column} |" in header
