"""scripts/run_suite.py: ``--only`` selection, well-formed suites, and commands that compose (no training).

The suites grow with every experiment, so nothing here copies their lists: the tests check rules every
entry must obey, and run ``main`` with ``run_one`` replaced to see which commands it would start.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from conftest import compose_cfg
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from distill.config import validate

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import run_suite  # noqa: E402
from run_suite import SUITES, selected  # noqa: E402

# A whole label ("a + b") that is also the start of a longer one ("a + b, c"), as in the real suites.
LABELS = ["a", "a + b", "a + b, c", "d"]


def pick(only: list[str], labels: list[str] = LABELS) -> list[str]:
    return [label for label in labels if selected(label, only, labels)]


def commands(monkeypatch, tmp_path: Path, *args: str) -> list[tuple[str, list[str]]]:
    """The ``(label, overrides)`` that ``run_suite.py <args>`` would run, in order; nothing is trained."""
    started = []

    def fake_run_one(label, overrides, log_dir, env):
        started.append((label, list(overrides)))
        return {"label": label, "command": "python train.py " + " ".join(overrides), "wall_s": 0.0,
                "returncode": 0, "placement": "test", "report": {"models": []}}

    monkeypatch.setattr(run_suite, "run_one", fake_run_one)
    monkeypatch.setattr(sys, "argv", ["run_suite.py", *args, "--out", str(tmp_path / "record")])
    run_suite.main()
    return started


def test_a_whole_label_picks_only_that_configuration():
    assert pick(["a"]) == ["a"]
    assert pick(["a + b"]) == ["a + b"]  # not "a + b, c", which it starts


def test_other_text_picks_every_label_containing_it():
    assert pick(["+ b"]) == ["a + b", "a + b, c"]
    assert pick([", c", "d"]) == ["a + b, c", "d"]  # several texts: the union, in suite order
    assert pick(["no such configuration"]) == []
    assert pick([]) == []


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_labels_are_unique_so_each_picks_one_configuration(suite):
    labels = [label for label, _ in SUITES[suite]]
    assert labels and len(set(labels)) == len(labels)
    for label in labels:
        assert pick([label], labels) == [label]


@pytest.mark.parametrize("suite", sorted(SUITES))
def test_overrides_are_plain_and_leave_data_and_log_dir_to_the_runner(suite):
    for label, overrides in SUITES[suite]:
        assert overrides and all(isinstance(o, str) and "=" in o for o in overrides), label
        keys = [o.split("=", 1)[0] for o in overrides]
        assert len(set(keys)) == len(keys), f"{label}: a key set twice"
        assert not {"data", "paths.log_dir"} & set(keys), f"{label}: main() sets data= and paths.log_dir="


def test_main_runs_the_selection_with_task_and_extra_overrides(monkeypatch, tmp_path):
    label, overrides = SUITES["glue"][0]
    started = commands(monkeypatch, tmp_path, "glue", "--only", label, "--tasks", "sst2,mrpc", "--extra", "seed=5")
    assert started == [(f"sst2: {label}", [*overrides, "data=sst2", "seed=5"]),
                       (f"mrpc: {label}", [*overrides, "data=mrpc", "seed=5"])]
    assert (tmp_path / "record.json").is_file() and label in (tmp_path / "record.md").read_text()


def test_main_keeps_the_suites_own_data_on_sst2_outside_glue(monkeypatch, tmp_path):
    started = commands(monkeypatch, tmp_path, "quant")
    assert started == [(label, overrides) for label, overrides in SUITES["quant"]]  # every entry, in order
    started = commands(monkeypatch, tmp_path, "quant", "--tasks", "rte")
    assert started == [(label, [*overrides, "data=rte"]) for label, overrides in SUITES["quant"]]


@pytest.mark.parametrize("suite, tasks", [("objectives", "sst2"), ("quant", "sst2"), ("glue", "sst2,stsb")])
def test_every_command_composes_as_a_valid_train_config(suite, tasks, monkeypatch, tmp_path):
    """What main() would pass to train.py composes (unknown keys, bad groups fail here), validates and resolves."""
    started = commands(monkeypatch, tmp_path, suite, "--tasks", tasks)
    assert len(started) == len(SUITES[suite]) * len(tasks.split(","))
    try:
        for label, overrides in started:
            try:
                cfg = compose_cfg([*overrides, f"paths.log_dir={tmp_path / 'logs'}"], tmp_path / "run")
                validate(cfg)
                OmegaConf.to_container(OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]), resolve=True)
            except Exception as err:
                pytest.fail(f"{suite} / {label}: python train.py {' '.join(overrides)} does not compose: {err}")
    finally:
        GlobalHydra.instance().clear()


def test_the_record_states_where_its_runs_ran_not_where_it_is_rendered():
    entries = [{"label": "a", "command": "python train.py", "wall_s": 60.0, "returncode": 0,
                "placement": "cores 1 with torch threads: 1", "report": {"models": []}}]
    assert "this suite ran on cores 1 with torch threads: 1" in run_suite.to_markdown("glue", entries, [])
