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
    ({"criterion": "movement"}, "callbacks.magnitude_pruning.criterion='movement' is not one of magnitude, wanda."),
    ({"start_fraction": 0.9, "end_fraction": 0.5}, "must satisfy 0 <= start < end <= 1"),
    ({"reconstruct": "yes"}, "callbacks.magnitude_pruning.reconstruct='yes' must be true or false."),
    ({"damping": 0}, "callbacks.magnitude_pruning.damping=0 must be a positive number"),
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


def test_wanda_weighs_magnitude_by_the_input_feature_scale():
    """Column 0 holds weights of magnitude 1 on a feature of RMS 10, column 1 weights of magnitude 2 on a feature
    of RMS 1: magnitude prunes column 0, wanda (1 * 10 > 2 * 1) prunes column 1; eval-mode passes are ignored."""
    from torch import nn

    def pruned_column(criterion):
        model = nn.Sequential(nn.Linear(2, 3, bias=False))
        with torch.no_grad():
            model[0].weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, -2.0], [1.0, 2.0]]))
        callback = MagnitudePruning(sparsity=0.5, criterion=criterion, scope="layer")
        if callback.stats is not None:
            callback.stats.attach(prunable_linears(model))
        x = torch.tensor([[10.0, 1.0], [-10.0, -1.0]])  # RMS 10 and 1
        model.train()(x)
        model.eval()(torch.tensor([[0.0, 1000.0]]))  # a validation pass: not recorded
        callback.prune_to(model, 0.5)
        zero = model[0].weight.eq(0)
        assert zero.sum() == 3 and zero.all(0).sum() == 1
        return int(zero.all(0).nonzero())

    assert pruned_column("magnitude") == 0
    assert pruned_column("wanda") == 1


def test_wanda_rms_is_the_root_mean_square_of_every_training_token():
    from torch import nn

    from distill.prune.input_stats import InputStats

    layer = nn.Linear(2, 1)
    norms = InputStats()
    norms.attach([layer])
    layer(torch.tensor([[[3.0, 0.0], [4.0, 1.0]]]))  # (batch 1, 2 tokens, 2 features)
    layer(torch.tensor([[0.0, 1.0]]))
    assert torch.allclose(norms.rms(layer), torch.tensor([(25 / 3) ** 0.5, (2 / 3) ** 0.5]))
    norms.reset()
    assert norms.rms(layer) is None
    norms.detach()
    layer(torch.ones(1, 2))
    assert norms.rms(layer) is None


def test_refit_matches_a_plain_least_squares_per_row():
    """The refitted kept weights of each row solve the ridge least squares on the recorded inputs (checked
    against torch.linalg.lstsq on the stacked system, the ridge pulling towards the dense values); zeros stay
    zeros; a mask keeping everything returns the dense weights."""
    from distill.prune.reconstruct import refit_kept_weights

    torch.manual_seed(0)
    x = torch.randn(200, 6, dtype=torch.float64) @ torch.randn(6, 6, dtype=torch.float64)  # correlated inputs
    dense = torch.randn(4, 6, dtype=torch.float64)
    mask = torch.tensor([[0, 0, 0, 0, 0, 0],  # nothing kept
                         [1, 0, 0, 1, 0, 0],  # fewer kept than pruned: solved on the kept side
                         [1, 1, 0, 1, 1, 1],  # more kept: the Optimal Brain Surgeon form over the pruned one
                         [0, 1, 1, 0, 1, 0]], dtype=torch.float64)
    gram = x.T @ x
    damping = 0.05
    lam = damping * gram.diagonal().mean()
    out = refit_kept_weights(dense, mask, gram, damping)
    assert out[mask == 0].eq(0).all()
    for i in range(1, 4):
        kept = mask[i].bool()
        a = torch.cat([x[:, kept], lam.sqrt() * torch.eye(int(kept.sum()), dtype=x.dtype)])
        b = torch.cat([x @ dense[i], lam.sqrt() * dense[i, kept]])
        assert torch.allclose(out[i, kept], torch.linalg.lstsq(a, b.unsqueeze(1)).solution.squeeze(1), atol=1e-8)
    assert torch.allclose(refit_kept_weights(dense, torch.ones_like(dense), gram, damping), dense, atol=1e-10)


def test_reconstruct_keeps_the_mask_and_brings_the_outputs_closer_to_dense():
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8))
    x = torch.randn(256, 6) @ torch.randn(6, 16)  # correlated features: kept weights can stand in for pruned ones
    dense_out = model(x).detach()

    def pruned_error(reconstruct):
        m = nn.Sequential(nn.Linear(16, 8))
        m.load_state_dict(model.state_dict())
        callback = MagnitudePruning(sparsity=0.5, reconstruct=reconstruct)
        if callback.stats is not None:
            callback.stats.attach(prunable_linears(m))
        m.train()(x)
        callback.prune_to(m, 0.5)
        zeros = m[0].weight.eq(0)
        assert zeros.sum() == 64 and torch.equal(zeros, callback.masks[m[0]].eq(0))
        return (m(x) - dense_out).square().mean().item(), zeros

    plain, plain_zeros = pruned_error(False)
    refit, refit_zeros = pruned_error(True)
    assert torch.equal(plain_zeros, refit_zeros)  # the same magnitude mask
    assert refit < 0.5 * plain


def test_checkpoints_from_before_the_target_sparsity_stop_competing(tmp_path):
    """A best checkpoint saved at 49.8% sparsity must not become the student shipped for 50%: when the schedule
    reaches its target the checkpoint callback's ranking restarts and the stale file is removed."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint
    from torch import nn

    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val/score", mode="max")
    stale = tmp_path / "best.ckpt"
    stale.write_text("epoch 2, 49.8% sparse")
    checkpoint.best_k_models, checkpoint.best_model_path = {str(stale): torch.tensor(0.81)}, str(stale)
    checkpoint.kth_best_model_path, checkpoint.best_model_score = str(stale), torch.tensor(0.81)
    model = nn.Sequential(nn.Linear(4, 4))
    trainer = SimpleNamespace(checkpoint_callbacks=[checkpoint], global_step=0, estimated_stepping_batches=10,
                              strategy=SimpleNamespace(remove_checkpoint=lambda p: __import__("os").remove(p)))
    module = SimpleNamespace(student=model, log=lambda *a, **k: None)
    callback = MagnitudePruning(sparsity=0.5, end_fraction=0.5, frequency=1)
    for step in range(1, 5):  # below the target: the ranking is untouched
        trainer.global_step = step
        callback.on_train_batch_end(trainer, module, None, None, step)
        assert 0 < callback.current < 0.5 and checkpoint.best_k_models and stale.exists()
    trainer.global_step = 5
    callback.on_train_batch_end(trainer, module, None, None, 5)
    assert callback.current == 0.5 and sparsity(prunable_linears(model)) == 0.5
    assert checkpoint.best_k_models == {} and checkpoint.best_model_path == "" and not stale.exists()
    assert checkpoint.check_monitor_top_k(trainer, torch.tensor(0.5))  # the next validation is saved


def test_a_resumed_run_keeps_its_zeros_without_re_ranking(tmp_path):
    """The callback's state carries the sparsity reached; after a resume the checkpoint's zeros are the masks,
    so an optimizer step cannot revive pruned weights and no ranking restarts."""
    from types import SimpleNamespace

    from torch import nn

    model = nn.Sequential(nn.Linear(8, 8))
    first = MagnitudePruning(sparsity=0.5)
    first.prune_to(model, 0.5)
    zeros = model[0].weight.eq(0)
    resumed = MagnitudePruning(sparsity=0.5)
    resumed.load_state_dict(first.state_dict())
    module = SimpleNamespace(student=model, log=lambda *a, **k: None)
    trainer = SimpleNamespace(checkpoint_callbacks=[], global_step=400, estimated_stepping_batches=375)
    resumed.on_train_start(trainer, module)
    with torch.no_grad():
        model[0].weight.add_(1.0)  # an optimizer step
    resumed.on_train_batch_end(trainer, module, None, None, 0)
    assert torch.equal(model[0].weight.eq(0), zeros)
