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
    ({"sparsity": 1.0}, r"prune.sparsity=1.0 must be in \[0, 1\)."),
    ({"sparsity": -0.1}, r"prune.sparsity=-0.1 must be in \[0, 1\)."),
    ({"scope": "row"}, "prune.scope='row' is not one of global, layer."),
    ({"start_fraction": 0.9, "end_fraction": 0.5}, "must satisfy 0 <= start < end <= 1"),
    ({"frequency": 0}, "prune.frequency=0 must be a positive number of steps."),
])
def test_bad_sparsity_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MagnitudePruning(**kwargs)
