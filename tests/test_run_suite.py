"""scripts/run_suite.py: which configurations ``--only`` picks (no training)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from run_suite import SUITES, selected  # noqa: E402


def pick(suite: str, only: list[str]) -> list[str]:
    labels = [label for label, _ in SUITES[suite]]
    return [label for label in labels if selected(label, only, labels)]


def test_a_whole_label_picks_only_that_configuration():
    # "tiny, TinyBERT two-stage" is also the start of the augmentation recipe's label
    assert pick("glue", ["tiny, TinyBERT two-stage"]) == ["tiny, TinyBERT two-stage"]


def test_other_text_picks_every_label_containing_it():
    assert pick("glue", ["+ augmentation"]) == [
        "tiny, TinyBERT two-stage + augmentation",
        "tiny, TinyBERT two-stage + augmentation, general on all GLUE sentences",
        "tiny, TinyBERT two-stage + augmentation, general on all GLUE sentences, task lr 3e-4"]
    assert pick("objectives", ["CE only, 1125"]) == [
        "tiny, CE only, 1125 steps", "tiny, CE only, 1125 steps, seed 1", "tiny, CE only, 1125 steps, seed 2",
        "tiny, CE only, 1125 steps, seed 3"]
    assert pick("glue", ["QAT", "lr 3e-4"]) == [label for label, _ in SUITES["glue"] if "QAT" in label or "lr 3e-4" in label]
    assert pick("quant", ["no such configuration"]) == []


def test_the_record_states_where_its_runs_ran_not_where_it_is_rendered():
    from run_suite import to_markdown

    entries = [{"label": "a", "command": "python train.py", "wall_s": 60.0, "returncode": 0,
                "placement": "cores 1 with torch threads: 1", "report": {"models": []}}]
    assert "this suite ran on cores 1 with torch threads: 1" in to_markdown("glue", entries, [])
