"""Faults under DDP: a two-process job (``trainer=ddp_cpu``, gloo) SIGKILLed in the middle of an epoch and run
again resumes from its last checkpoint and ends exactly where the same job never killed ends.

What has to survive the kill for that: each rank's position in its shard of the epoch's permutation (the
stateful loader's state, in the checkpoint), the optimizer and scheduler, and *each rank's* random generators
(dropout draws differ per rank; Lightning keeps only rank 0's callback states).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, fast_overrides

TESTS = Path(__file__).resolve().parent


def _job(args: list[str]) -> subprocess.Popen:
    """``python train.py <args>`` in a process group of its own, so that one SIGKILL ends every rank of it."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return proc.returncode, out + err


def _run_dir(root: Path) -> Path:
    (report,) = root.glob("**/report.json")
    return report.parent


@pytest.mark.slow
def test_ddp_job_killed_mid_epoch_resumes_to_the_uninterrupted_weights(glue_dir, tiny_teacher, tmp_path):
    # 40 examples, 2 ranks at batch 2: 10 steps an epoch, 30 in all; the student and teacher keep dropout
    # (0.1), so each rank's generator matters. Killed after step 14 (inside epoch 2), 2 steps after the
    # checkpoint of step 12: those 2 steps are redone.
    common = [*fast_overrides(glue_dir, tiny_teacher, tmp_path / "cache"), "trainer=ddp_cpu", "data.max_train_samples=40",
              "data.batch_size=2", "trainer.max_epochs=3", "logger=none", "trainer.deterministic=true",
              "+callbacks.model_checkpoint.every_n_train_steps=3"]
    kill = ["+callbacks.kill._target_=kill_job.KillJobAfterStep", "+callbacks.kill.step=14",
            f"+callbacks.kill.marker={tmp_path / 'killed'}"]
    args = [*common, *kill, f"paths.log_dir={tmp_path / 'logs'}"]
    code, log = _finish(_job(args))
    assert code == -signal.SIGKILL and (tmp_path / "killed").is_file(), log[-3000:]
    (killed,) = (tmp_path / "logs").glob("**/checkpoints/last.ckpt")
    assert torch.load(killed, weights_only=True)["global_step"] == 12
    assert not list((tmp_path / "logs").glob("**/report.json"))

    time.sleep(1.1)  # the same command again: a new timestamped folder, ckpt_path=auto finds the killed run
    code, log = _finish(_job(args))
    assert code == 0 and f"Resuming from {killed}" in log, log[-3000:]
    resumed = _run_dir(tmp_path / "logs")
    assert resumed != killed.parent.parent

    code, log = _finish(_job([*common, f"paths.log_dir={tmp_path / 'whole'}"]))
    assert code == 0, log[-3000:]
    whole = _run_dir(tmp_path / "whole")

    a = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(whole / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 30
    assert a["state_dict"].keys() == b["state_dict"].keys()
    differ = [k for k in b["state_dict"] if not torch.equal(a["state_dict"][k], b["state_dict"][k])]
    assert not differ, differ
    moments = lambda ckpt: ckpt["optimizer_states"][0]["state"]  # noqa: E731 - AdamW's step, exp_avg, exp_avg_sq
    assert moments(a).keys() == moments(b).keys()
    assert all(torch.equal(moments(a)[i][n], moments(b)[i][n]) for i in moments(b) for n in moments(b)[i])
    assert a["lr_schedulers"] == b["lr_schedulers"]
    score = lambda run: {r["model"]: r["score"] for r in json.loads((run / "report.json").read_text())["models"]}["student"]  # noqa: E731
    assert score(resumed) == score(whole)


def _wrapped_as_lightning_does(rank: int, seed: int = 7):
    """A training loader as Lightning hands it to the strategy under DDP: our StatefulDataLoader re-built
    around a ``DistributedSamplerWrapper`` of its sampler (Lightning's ``_update_dataloader``)."""
    from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
    from lightning.pytorch.trainer.states import RunningStage
    from lightning.pytorch.utilities.data import _update_dataloader

    from distill.data.sampling import train_loader

    loader = train_loader(list(range(10)), batch_size=2, collate_fn=torch.tensor)
    wrapper = DistributedSamplerWrapper(loader.sampler, num_replicas=2, rank=rank, seed=seed, shuffle=True)
    return _update_dataloader(loader, wrapper, mode=RunningStage.TRAINING), wrapper


def test_ddp_swaps_lightnings_wrapper_for_resumable_shards_of_one_permutation():
    from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

    from distill.distributed import DDPStrategy

    lit, wrapper = _wrapped_as_lightning_does(rank=1)
    assert lit.batch_sampler.sampler is wrapper and lit.sampler is not wrapper  # where Lightning puts it
    shards = [DDPStrategy().process_dataloader(_wrapped_as_lightning_does(rank=r)[0]) for r in (0, 1)]
    assert all(isinstance(s.batch_sampler.sampler, StatefulDistributedSampler) for s in shards)
    for epoch in (0, 1):
        for s in shards:
            s.batch_sampler.sampler.set_epoch(epoch)
        g = torch.Generator()
        g.manual_seed(7 + epoch)
        perm = torch.randperm(10, generator=g).tolist()  # one permutation per epoch, the same on both ranks
        batches = [[b.tolist() for b in s] for s in shards]
        assert [i for b in batches[0] for i in b] == perm[0::2] and [i for b in batches[1] for i in b] == perm[1::2]
    # its position survives a restart: a loader restored from a state after 2 batches yields the rest
    first = shards[1]
    it = iter(first)
    next(it), next(it)
    state = first.state_dict()
    again = DDPStrategy().process_dataloader(_wrapped_as_lightning_does(rank=1)[0])
    again.batch_sampler.sampler.set_epoch(1)
    again.load_state_dict(state)
    assert [b.tolist() for b in again] == [b.tolist() for b in it]


def test_each_rank_gets_its_own_callback_states_back():
    from distill.distributed import RANK_STATES, own_rank_states

    def ckpt():
        return {"callbacks": {"RNGState": "rank 0"}, RANK_STATES: [{"RNGState": "rank 0"}, {"RNGState": "rank 1"}]}

    assert own_rank_states(ckpt(), rank=1, world_size=2)["callbacks"] == {"RNGState": "rank 1"}
    assert own_rank_states(ckpt(), rank=0, world_size=2) == {"callbacks": {"RNGState": "rank 0"}}
    assert own_rank_states(ckpt(), rank=2, world_size=4)["callbacks"] == {"RNGState": "rank 0"}  # another world size
    assert own_rank_states({"callbacks": {}}, rank=1, world_size=2) == {"callbacks": {}}  # a one-process checkpoint
