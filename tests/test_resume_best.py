"""A run crashed and resumed into another run folder (``ckpt_path=<the crashed run's last.ckpt>``) ships the
student an uninterrupted run ships: the best checkpoint from before the crash is carried into the new folder."""

import pytest
import torch
from safetensors.torch import load_file

from distill.errors import TrainingError
from distill.losses.hard import HardLabelLoss
from distill.train import run


@pytest.mark.slow
def test_run_resumed_in_a_new_folder_ships_the_uninterrupted_runs_best_student(make_cfg, tmp_path, monkeypatch):
    # 10 steps an epoch, a checkpoint every 3 steps: the best (by the dev score of epoch 1) is written at step
    # 12, the crash comes at step 16, so the run resumes from step 15, after its best checkpoint
    args = ("data.max_train_samples=40", "data.batch_size=4", "trainer.max_epochs=3", "logger=none",
            "+callbacks.model_checkpoint.every_n_train_steps=3")
    run(make_cfg(*args, output="whole"))
    real, calls = HardLabelLoss.forward, []

    def crash(self, *a):
        calls.append(1)
        return real(self, *a) * (float("nan") if len(calls) == 17 else 1.0)

    monkeypatch.setattr(HardLabelLoss, "forward", crash)
    with pytest.raises(TrainingError):
        run(make_cfg(*args, output="crashed"))
    monkeypatch.setattr(HardLabelLoss, "forward", real)
    killed = tmp_path / "crashed" / "checkpoints"
    assert torch.load(killed / "last.ckpt", weights_only=True)["global_step"] == 15
    run(make_cfg(*args, f"ckpt_path={killed / 'last.ckpt'}", output="resumed"))

    step = lambda run_dir: torch.load(tmp_path / run_dir / "checkpoints" / "best.ckpt", weights_only=True)["global_step"]  # noqa: E731
    assert step("whole") == step("crashed") == 12  # the best comes before the crash, and stays the best
    assert step("resumed") == 12  # with Lightning's own ModelCheckpoint: 21, the first checkpoint after the resume
    a, b = (load_file(tmp_path / d / "student" / "model.safetensors") for d in ("whole", "resumed"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
