"""Magnitude pruning: the cubic schedule, the target sparsity reached and kept through save / load, bad values."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from distill.errors import ConfigError
from distill.prune.magnitude import MagnitudePruning, cubic_sparsity, prunable_linears, sparsity

from .test_cut import teacher


def test_cubic_schedule():
    assert cubic_sparsity(0, 100, 0.9) == 0.0
    assert cubic_sparsity(80, 100, 0.9) == pytest.approx(0.9) and cubic_sparsity(100, 100, 0.9) == pytest.approx(0.9)
    assert cubic_sparsity(40, 100, 0.9) == pytest.approx(0.9 * (1 - 0.5**3))
    values = [cubic_sparsity(s, 100, 0.5) for s in range(101)]
    assert values == sorted(values)


@pytest.mark.parametrize("scope", ["global", "layer"])
def test_sparsity_reaches_its_target_and_survives_save_load(tmp_path, scope):
    model = teacher()
    callback = MagnitudePruning(sparsity=0.75, scope=scope)
    callback.prune_to(model, 0.75)
    with torch.no_grad():  # an optimizer step moves pruned weights; the callback puts them back to zero
        for m in prunable_linears(model):
            m.weight.add_(1.0)
    callback._apply()
    assert sparsity(prunable_linears(model)) == pytest.approx(0.75, abs=1e-3)
    assert all("weight_orig" not in k and "mask" not in k for k in model.state_dict())
    model.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    assert sparsity(prunable_linears(loaded)) == pytest.approx(0.75, abs=1e-3)
    assert model.classifier.weight.ne(0).all()  # the task head is not pruned


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"sparsity": 1.0}, r"callbacks.magnitude_pruning.sparsity=1.0 must be a fraction of zero weights in \[0, 1\)."),
    ({"sparsity": -0.1}, r"callbacks.magnitude_pruning.sparsity=-0.1 must be a fraction of zero weights in \[0, 1\)."),
    ({"sparsity": "half"}, r"callbacks.magnitude_pruning.sparsity='half' must be a fraction"),
    ({"scope": "row"}, "callbacks.magnitude_pruning.scope='row' is not one of global, layer."),
    ({"start_fraction": 0.9, "end_fraction": 0.5}, "must satisfy 0 <= start < end <= 1"),
    ({"frequency": 0}, "callbacks.magnitude_pruning.frequency=0 must be a positive number of steps."),
    ({"pattern": "4:2"}, "callbacks.magnitude_pruning.pattern='4:2' is not allowed; use unstructured or N:M"),
])
def test_bad_sparsity_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MagnitudePruning(**kwargs)


@pytest.mark.parametrize(("override", "message"), [
    ("callbacks.magnitude_pruning.sparsity=1.5", "callbacks.magnitude_pruning.sparsity=1.5 must be a fraction of "
                                                 "zero weights in [0, 1)."),
    ("callbacks.magnitude_pruning.pattern=2:8", "callbacks.magnitude_pruning.sparsity=0.5 does not match "
                                                "pattern=2:8, which keeps 2 of every 8 weights; set sparsity=0.75."),
    ("callbacks.magnitude_pruning.pattern=diagonal", "callbacks.magnitude_pruning.pattern='diagonal' is not allowed"),
])
def test_bad_values_stop_the_command_before_any_work(glue_dir, tiny_teacher, tmp_path, monkeypatch, capsys,
                                                     override, message):
    """``python train.py +prune=magnitude <bad value>``: one sentence, exit code 2, no checkpoint written."""
    from conftest import fast_overrides
    from test_train import _main_in_process

    args = [*fast_overrides(glue_dir, tiny_teacher, tmp_path / "cache"), f"paths.log_dir={tmp_path}",
            "+prune=magnitude", override]
    code, err = _main_in_process(args, monkeypatch, capsys)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and message in lines[0], err[-2000:]
    assert "Traceback" not in err and not list(tmp_path.glob("**/checkpoints"))
