"""distill.checkpoint.ResumableCheckpoint on a toy module whose dev score is set by hand per epoch: the best
checkpoint survives a resume into another folder, and last.ckpt is rewritten at every epoch end."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from distill.checkpoint import AtomicCheckpointIO, ResumableCheckpoint

STEPS_PER_EPOCH = 4


class Toy(L.LightningModule):
    """A linear layer; ``val/score`` of epoch e is ``scores[e]``."""

    def __init__(self, scores: list[float]) -> None:
        super().__init__()
        self.scores, self.layer = scores, torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        return torch.nn.functional.mse_loss(self.layer(batch[0]), batch[1])

    def validation_step(self, batch, batch_idx):
        self.log("val/score", self.scores[self.current_epoch])

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(8, 2, generator=g), torch.randn(8, 1, generator=g)), batch_size=2)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(2, 2)), batch_size=2)


class StopAfterStep(L.Callback):
    """A crash right after training step ``step`` (before the checkpoint callback's own hook runs)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step == self.step:
            raise RuntimeError("crash")


class LastStepAtEpochStart(L.Callback):
    """The global step stored in last.ckpt at each epoch start after the first, and at the end of fit."""

    def __init__(self, path) -> None:
        self.path, self.seen = path, []

    def _look(self, trainer):
        self.seen.append((trainer.global_step, _step(self.path) if self.path.is_file() else None))

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch:
            self._look(trainer)

    def on_fit_end(self, trainer, pl_module):
        self._look(trainer)


def _fit(scores, dirpath, *extra, kind=ResumableCheckpoint, ckpt_path=None, epochs=3):
    torch.manual_seed(0)
    ckpt = kind(dirpath=str(dirpath), filename="best", monitor="val/score", mode="max", save_last=True,
                save_top_k=1)  # as conf/callbacks/default.yaml
    trainer = L.Trainer(max_epochs=epochs, callbacks=[*extra, ckpt], plugins=[AtomicCheckpointIO()], logger=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        default_root_dir=str(dirpath))
    trainer.fit(Toy(scores), ckpt_path=ckpt_path)
    return trainer, ckpt


def _step(path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


@pytest.mark.parametrize(("kind", "stale"), [(ModelCheckpoint, True), (ResumableCheckpoint, False)])
def test_last_checkpoint_is_rewritten_at_an_epoch_end_that_did_not_improve(tmp_path, kind, stale):
    # epochs of 4 steps; epoch 2 (0.4) and epoch 3 (0.5, a tie) do not beat epoch 1, so Lightning's own class
    # leaves last.ckpt at epoch 1's end (step 4) from then on.
    probe = LastStepAtEpochStart(tmp_path / "last.ckpt")
    _fit([0.5, 0.4, 0.5], tmp_path, probe, kind=kind)
    assert _step(tmp_path / "best.ckpt") == STEPS_PER_EPOCH
    if stale:
        assert probe.seen == [(4, 4), (8, 4), (12, 4)]  # the defect (Lightning 2.6), pinned
    else:
        assert probe.seen == [(4, 4), (8, 8), (12, 12)]


@pytest.mark.parametrize("kind", [ModelCheckpoint, ResumableCheckpoint])
def test_run_resumed_into_another_folder_keeps_the_best_checkpoint_of_the_run_it_resumes(tmp_path, kind):
    scores = [0.5, 0.4, 0.3]  # the best is epoch 1's (step 4), saved before the crash at step 7
    _, whole = _fit(scores, tmp_path / "whole", kind=kind)
    assert _step(whole.best_model_path) == 4 and whole.best_model_score == 0.5

    with pytest.raises(RuntimeError, match="crash"):
        _fit(scores, tmp_path / "killed", StopAfterStep(7), kind=kind)
    assert _step(tmp_path / "killed" / "last.ckpt") == 4
    _, resumed = _fit(scores, tmp_path / "resumed", kind=kind, ckpt_path=tmp_path / "killed" / "last.ckpt")

    best = torch.load(resumed.best_model_path, weights_only=True)
    if kind is ModelCheckpoint:  # the defect: the first validation after the resume became the best
        assert best["global_step"] == 8
        return
    assert resumed.best_model_path == str(tmp_path / "resumed" / "best.ckpt")
    assert resumed.best_model_score == 0.5 and best["global_step"] == 4
    expected = torch.load(whole.best_model_path, weights_only=True)["state_dict"]
    assert all(torch.equal(best["state_dict"][k], expected[k]) for k in expected)
    assert sorted(p.name for p in (tmp_path / "resumed").glob("*.ckpt")) == ["best.ckpt", "last.ckpt"]
    assert _step(tmp_path / "resumed" / "last.ckpt") == 12
    assert (tmp_path / "killed" / "best.ckpt").is_file()  # copied, not moved


@pytest.mark.parametrize(("kind", "warns"), [(ModelCheckpoint, True), (ResumableCheckpoint, False)])
def test_a_fit_that_stops_before_validating_saves_no_best_and_says_nothing(tmp_path, kind, warns):
    """A MobileBERT layer phase stops after 20 steps, before any validation: Lightning warns that ``val/score``
    is missing (and saves no best); ours saves no best either, without the warning; ``last.ckpt`` is kept."""
    import warnings

    from lightning.pytorch.callbacks.model_checkpoint import warning_cache

    warning_cache.clear()  # Lightning warns once per message and process
    torch.manual_seed(0)
    ckpt = kind(dirpath=str(tmp_path), filename="best", monitor="val/score", mode="max", save_last=True, save_top_k=1)
    trainer = L.Trainer(max_steps=STEPS_PER_EPOCH // 2, callbacks=[ckpt], logger=False, enable_progress_bar=False,
                        enable_model_summary=False, num_sanity_val_steps=0, default_root_dir=str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(Toy([0.5]))
    missing = [w for w in caught if "could not find the monitored key" in str(w.message)]
    assert bool(missing) == warns
    assert ckpt.best_model_path == "" and not (tmp_path / "best.ckpt").exists()
    assert _step(tmp_path / "last.ckpt") == STEPS_PER_EPOCH // 2
