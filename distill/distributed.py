"""Several processes (DDP) on one engine: Lightning's DDP strategy, with four things it does not do for us.

* **Shards of our resumable order.** Lightning replaces a ``torch.utils.data.RandomSampler`` with a
  ``DistributedSampler`` but wraps any other sampler — ours is torchdata's stateful one — in a
  ``DistributedSamplerWrapper``, which re-shuffles the positions of each rank's *own* draw of the wrapped
  sampler. Each rank draws that epoch's seed from its own global generator, and those generators drift apart
  (dropout draws as many numbers as each rank's padded batch has elements), so from the second epoch on the
  ranks' shards overlap and miss examples. :meth:`DDPStrategy.process_dataloader` swaps the wrapper for
  torchdata's ``StatefulDistributedSampler`` (``seed + epoch``: the same permutation on every rank and for every
  world size; rank ``r`` takes positions ``r, r + W, ...``), whose position the ``StatefulDataLoader`` keeps
  in every checkpoint, so a killed DDP run resumes on the same batches. (Lightning puts the wrapper inside the
  loader's torchdata ``BatchSampler``, not in ``loader.sampler``: :func:`distributed_wrapper` looks in both.)
* **Every rank's random generators in the checkpoint.** Lightning writes rank 0's callback states only, so a
  resumed rank 1 would draw rank 0's dropout masks; :meth:`DDPStrategy.save_checkpoint` gathers every rank's
  and :meth:`DDPStrategy.load_checkpoint` hands each rank its own (``tests/test_ddp_resume.py``: a 2-process
  job SIGKILLed mid-epoch resumes to the uninterrupted run's weights and optimizer state, bit for bit).
* **One folder per Hydra job.** Lightning starts ranks ``1..N-1`` as ``python train.py <the same argv>
  hydra.run.dir=<run.dir>``; under ``-m`` that re-runs the whole sweep in folders of its own (``run.dir`` is
  not the job's folder). :class:`JobScriptLauncher` starts them as a single run of *this job* (its overrides,
  ``hydra.run.dir=<the job's output folder>``), and :func:`end_job` lets the next job of the sweep start
  its own processes.
* **Rank zero writes.** :func:`is_global_zero` and :func:`barrier` for the stages: every rank fits, only rank
  0 writes the run folder's files (report, student, caches), the others return after fitting.

:class:`FSDPStrategy` (``trainer=fsdp`` / ``fsdp_cpu``) adds the same to Lightning's FSDP, plus norm clipping, the CPU
(gloo), and a plain, unsharded module at the end of each fit (see its docstring).

The teacher is never wrapped for gradient sync: ``DistillationModule`` freezes it (``requires_grad=False``)
and DDP builds its gradient buckets from parameters that require grad only, so each rank holds a full
replica of the teacher and runs it forward only (``tests/test_distributed.py`` checks the buckets).
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import lightning as L
import torch
import torch.distributed as dist
from lightning.fabric.utilities.distributed import DistributedSamplerWrapper
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.plugins.precision import FSDPPrecision
from lightning.pytorch.strategies import DDPStrategy as _LightningDDP
from lightning.pytorch.strategies import FSDPStrategy as _LightningFSDP
from lightning.pytorch.strategies.fsdp import _setup_activation_checkpointing
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from lightning.pytorch.trainer.states import RunningStage, TrainerFn, TrainerStatus
from lightning.pytorch.utilities.data import _update_dataloader
from torch.distributed.fsdp import (
    FullOptimStateDictConfig,
    FullStateDictConfig,
    FullyShardedDataParallel,
    OptimStateKeyType,
    StateDictType,
)
from torchdata.stateful_dataloader.sampler import RandomSampler as StatefulRandomSampler
from torchdata.stateful_dataloader.sampler import StatefulDistributedSampler

log = logging.getLogger("distill")

# what _SubprocessScriptLauncher puts into this process's environment for its children
_LAUNCH_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
_launchers: list[JobScriptLauncher] = []


def global_rank() -> int:
    """This process's rank among all processes (0 without distributed training)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(rank_zero_only.rank)  # Lightning's, read from RANK / LOCAL_RANK / SLURM_PROCID at import


def is_global_zero() -> bool:
    return global_rank() == 0


def barrier() -> None:
    """Wait for every rank (a no-op in one process): rank 0 has written what the others read next."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def leave_training() -> bool:
    """After a job's last fit: wait for every rank, end the process group, and say whether this is rank 0,
    which goes on alone (its report's metrics must not wait in a collective for ranks that have returned)."""
    zero = is_global_zero()
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    return zero


class JobScriptLauncher(_SubprocessScriptLauncher):
    """Lightning's launcher (``python train.py ...`` once per extra local rank) that keeps a Hydra multirun
    job's ranks in the job's folder and starts them as one run of that job, not as the whole sweep again."""

    def _call_children_scripts(self) -> None:
        self._saved_env = {k: os.environ.get(k) for k in _LAUNCH_ENV}
        _launchers.append(self)
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
            return super()._call_children_scripts()
        self._check_can_spawn_children()
        env = self.cluster_environment
        os.environ.update(MASTER_ADDR=env.main_address, MASTER_PORT=str(env.main_port), NODE_RANK=str(env.node_rank()),
                          LOCAL_RANK=str(env.local_rank()), WORLD_SIZE=str(self.num_processes * self.num_nodes))
        command, cwd = job_command(HydraConfig.get())
        for local_rank in range(1, self.num_processes):
            child = job_child_args(command, local_rank)
            self.procs.append(subprocess.Popen(child, env={**os.environ, "LOCAL_RANK": str(local_rank)}, cwd=cwd))

    def end(self, failed: bool = False) -> None:
        """Wait for this job's other ranks (end them if this one failed: they may wait in a collective forever),
        then restore the environment so that the next job of a sweep launches its own."""
        for proc in self.procs:
            if failed and proc.poll() is None:
                proc.kill()
            if proc.wait() != 0 and not failed:
                log.warning("rank process %s ended with exit code %s", proc.pid, proc.returncode)
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def job_command(hydra_cfg) -> tuple[list[str], str]:
    """``python train.py <flags> <this job's overrides>``: one run of the current multirun job."""
    from hydra.utils import get_original_cwd, to_absolute_path

    argv = sys.argv[1:]
    flags = [a for a in argv if a not in ("-m", "--multirun") and (a.startswith("-") or "=" not in a)]
    return [sys.executable, to_absolute_path(sys.argv[0]), *flags, *hydra_cfg.overrides.task,
            f'hydra.run.dir="{hydra_cfg.runtime.output_dir}"'], get_original_cwd()


def job_child_args(command: list[str], local_rank: int) -> list[str]:
    # output_subdir=null: rank 0 alone writes .hydra/; mode=RUN: a preset that sets hydra.mode stays one run
    return [*command, f"hydra.job.name=train_ddp_process_{local_rank}", "hydra.output_subdir=null", "hydra.mode=RUN"]


def end_job(failed: bool = False) -> None:
    """End the distributed part of one Hydra job (a no-op when this job started no processes)."""
    if not _launchers:
        return
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    while _launchers:
        _launchers.pop().end(failed)


def distributed_wrapper(dataloader: object) -> DistributedSamplerWrapper | None:
    """The ``DistributedSamplerWrapper`` Lightning put into ``dataloader``, if any. Our ``StatefulDataLoader``s
    carry torchdata's ``BatchSampler``, which Lightning treats as a custom batch sampler: it rebuilds that batch
    sampler around the wrapper and leaves ``dataloader.sampler`` a plain ``SequentialSampler``."""
    for sampler in (getattr(dataloader, "sampler", None), getattr(getattr(dataloader, "batch_sampler", None), "sampler", None)):
        if isinstance(sampler, DistributedSamplerWrapper):
            return sampler
    return None


class _RankAware:
    """What our DDP and FSDP strategies add to Lightning's (mixed in before the Lightning class): one folder per
    Hydra job, per-rank shards of the resumable order, every rank's callback states in the checkpoint."""

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if isinstance(self._launcher, _SubprocessScriptLauncher):
            self._launcher = JobScriptLauncher(self.cluster_environment, self.num_processes, self.num_nodes)

    def process_dataloader(self, dataloader: object) -> object:
        sampler = distributed_wrapper(dataloader)
        if sampler is not None:
            inner = sampler.dataset._sampler
            if callable(getattr(inner, "shard", None)):  # our training samplers: each knows its per-rank form
                shards = inner.shard(sampler.num_replicas, sampler.rank, sampler.seed, sampler.drop_last)
            elif isinstance(inner, (StatefulRandomSampler, torch.utils.data.RandomSampler)):
                shards = StatefulDistributedSampler(inner.data_source, num_replicas=sampler.num_replicas,
                                                    rank=sampler.rank, shuffle=True, seed=sampler.seed,
                                                    drop_last=sampler.drop_last)
            else:
                return super().process_dataloader(dataloader)
            dataloader = _update_dataloader(dataloader, shards, mode=RunningStage.TRAINING)
        return super().process_dataloader(dataloader)

    def save_checkpoint(self, checkpoint: dict, filepath, storage_options=None) -> None:
        """Every rank's callback states into rank 0's file (see :func:`gather_rank_states`); all ranks call this."""
        gather_rank_states(checkpoint, self.world_size)
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        return own_rank_states(super().load_checkpoint(checkpoint_path, weights_only=weights_only), self.global_rank,
                               self.world_size)


class DDPStrategy(_RankAware, _LightningDDP):
    """``lightning.pytorch.strategies.DDPStrategy`` with per-rank shards of the resumable training order, every
    rank's random generators in checkpoints and one folder per Hydra job (see the module docstring)."""


class FSDPStrategy(_RankAware, _LightningFSDP):
    """Lightning's ``FSDPStrategy`` (``conf/trainer/fsdp.yaml``) with what :class:`DDPStrategy` adds, and:

    * **A plain model after the fit.** Inside the fit the models' parameters are shards (each rank holds a slice
      of every FSDP unit); what follows a fit — loading the best checkpoint, saving the Hugging Face student,
      the report, the next phase — needs whole tensors. At the end of a fit that ran to completion
      :meth:`teardown` gathers the full state dict (a collective: every rank takes part), takes the FSDP
      wrappers out of the module tree and puts the full tensors back (:func:`unshard`), on every rank, on the
      CPU; rank 0 then writes the student as in one process. A fit that failed is left as it is (the other
      ranks may never reach the gather).
    * **CPU (gloo).** torch's FSDP takes the CPU only when it is named as the device (Lightning passes
      ``device_id=None`` there, which torch reads as "the accelerator"), and offloading the gathered state dict
      to the CPU crashes when there is no accelerator: on CPU :meth:`_setup_model` names the device and full
      state dicts are gathered without offload. For tests and CPU-only boxes; a GPU run is unchanged.
    """

    def setup(self, trainer) -> None:
        plugin = self.precision_plugin  # Lightning's refuses gradient_clip_val (clipping by norm): ours clips
        self.precision_plugin = NormClippingFSDPPrecision(plugin.precision, **({"scaler": plugin.scaler} if plugin.scaler else {}))
        super().setup(trainer)
        self.precision_plugin.root = self.model

    def _setup_model(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.root_device.type != "cpu" or any(isinstance(m, FullyShardedDataParallel) for m in model.modules()):
            return super()._setup_model(model)
        model = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload, sharding_strategy=self.sharding_strategy,
                                         mixed_precision=self.mixed_precision_config, device_id=self.root_device,
                                         **self.kwargs)
        _setup_activation_checkpointing(model, self._activation_checkpointing_kwargs)
        return model

    def lightning_module_state_dict(self) -> dict:
        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return super().lightning_module_state_dict()
        with full_state_dict_type(self.model, rank0_only=True):
            return self.model.state_dict()

    def optimizer_state(self, optimizer) -> dict:
        if self.root_device.type != "cpu" or self._state_dict_type != "full":
            return super().optimizer_state(optimizer)
        optimizer = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer's own
        with full_state_dict_type(self.model, rank0_only=True):
            state = FullyShardedDataParallel.optim_state_dict(self.model, optimizer)
            if self.global_rank == 0:  # the standard layout (parameter ids), as Lightning stores it
                state = FullyShardedDataParallel.rekey_optim_state_dict(state, OptimStateKeyType.PARAM_ID, self.model)
            return state

    def load_checkpoint(self, checkpoint_path, weights_only: bool | None = None) -> dict:
        # Lightning loads a full checkpoint into the root unit strictly, and ours hold no teacher
        # (DistillationModule.on_save_checkpoint): its keys, and only its, may be missing (the live one stays)
        hook = self.model.register_load_state_dict_post_hook(_teacher_not_in_checkpoints)
        try:
            return super().load_checkpoint(checkpoint_path, weights_only=weights_only)
        finally:
            hook.remove()

    def teardown(self) -> None:
        module = self.lightning_module
        trainer = getattr(module, "_trainer", None) if module is not None else None
        if (isinstance(self.model, FullyShardedDataParallel) and trainer is not None
                and trainer.state.fn == TrainerFn.FITTING and trainer.state.status == TrainerStatus.RUNNING):
            self.model = unshard(self.model)
        super().teardown()


class NormClippingFSDPPrecision(FSDPPrecision):
    """Lightning's FSDP precision plugin, with ``trainer.gradient_clip_val`` (clip by norm) working: the norm of the
    whole gradient, over every rank's shards, clipped by the root FSDP unit's ``clip_grad_norm_`` (Lightning's
    plugin has no reference to the root unit and refuses; ``torch.nn.utils.clip_grad_norm_`` would clip each
    rank's shard by its own norm)."""

    root: FullyShardedDataParallel | None = None

    def clip_grad_by_norm(self, optimizer, clip_val: float) -> None:
        self.root.clip_grad_norm_(clip_val)


def _teacher_not_in_checkpoints(module, incompatible) -> None:
    incompatible.missing_keys[:] = [k for k in incompatible.missing_keys
                                    if not k.replace("_fsdp_wrapped_module.", "").startswith("teacher.")]


def full_state_dict_type(model: FullyShardedDataParallel, rank0_only: bool):
    """FSDP's full (gathered) state-dict mode for ``model``; offloaded to the CPU from an accelerator only."""
    offload = next(model.parameters()).device.type != "cpu"
    return FullyShardedDataParallel.state_dict_type(
        model, StateDictType.FULL_STATE_DICT, FullStateDictConfig(offload_to_cpu=offload, rank0_only=rank0_only),
        FullOptimStateDictConfig(offload_to_cpu=offload, rank0_only=rank0_only))


def unshard(model: FullyShardedDataParallel) -> torch.nn.Module:
    """The module ``model`` wraps, with every nested FSDP unit replaced by the module it wraps and every
    parameter whole again, on the CPU (a collective: call it on every rank). Needs ``use_orig_params=True``
    (conf/trainer/fsdp.yaml), under which the wrapped modules keep their own parameter names."""
    with full_state_dict_type(model, rank0_only=False):
        state = model.state_dict()
    inner = model.module

    def unwrap(parent: torch.nn.Module) -> None:
        for name, child in list(parent.named_children()):
            if isinstance(child, FullyShardedDataParallel):
                child = child.module
                setattr(parent, name, child)
            unwrap(child)

    unwrap(inner)
    names = {name for name, _ in inner.named_parameters(remove_duplicate=False)}
    if not names <= state.keys():
        raise RuntimeError(f"FSDP's full state dict lacks {sorted(names - state.keys())[:3]}: is use_orig_params on?")
    for key, value in state.items():  # the shards are views of other shapes: put whole tensors in their place
        owner, _, attr = key.rpartition(".")
        sub = inner.get_submodule(owner)
        if attr in sub._parameters:  # requires_grad kept: a frozen teacher stays frozen
            sub._parameters[attr] = torch.nn.Parameter(value, requires_grad=sub._parameters[attr].requires_grad)
        elif attr in sub._buffers:
            sub._buffers[attr] = value
    return inner.cpu()


RANK_STATES = "callbacks_per_rank"


def gather_rank_states(checkpoint: dict, world_size: int) -> None:
    """Add every rank's callback states to ``checkpoint`` (``callbacks_per_rank``, indexed by rank; a collective).

    Lightning writes rank 0's callback states only, so a resumed rank 1 would restore rank 0's random generators
    (``distill.checkpoint.RNGState``) and draw rank 0's dropout masks: the resumed run would leave the one that
    never stopped. Tensors and plain lists only, so the file still loads with ``weights_only=True``."""
    if world_size < 2 or not (dist.is_available() and dist.is_initialized()):
        return
    states: list = [None] * world_size
    dist.all_gather_object(states, checkpoint.get("callbacks", {}))
    checkpoint[RANK_STATES] = states


def own_rank_states(checkpoint: dict, rank: int, world_size: int) -> dict:
    """``checkpoint`` with this rank's own callback states (saved by :func:`gather_rank_states`). Resumed on
    another number of processes, every rank takes rank 0's: the shards of the data differ then anyway, so the
    run goes on from the checkpoint but not on exactly the batches and draws it would have seen."""
    states = checkpoint.pop(RANK_STATES, None)
    if states is None:
        return checkpoint
    if len(states) == world_size:
        checkpoint["callbacks"] = states[rank]
    elif rank == 0:
        log.warning("the checkpoint was written by %d processes and resumes on %d: each rank's data shard and "
                    "random draws differ from those of the run that wrote it", len(states), world_size)
    return checkpoint


class GlobalTrainLoss(L.Callback):
    """Log ``train/global_loss``: the training loss averaged over all ranks (what DDP's averaged gradient
    descends; ``train/loss`` is rank 0's shard only). Equal to ``train/loss`` in one process."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        value = trainer.strategy.reduce(loss.detach(), reduce_op="mean")
        pl_module.log("train/global_loss", value, batch_size=batch["input_ids"].shape[0])


def layer_classes(names: list[str]) -> set[type]:
    """The module classes named by import path (``conf/trainer/fsdp.yaml``'s ``auto_wrap_policy``: one FSDP
    unit per transformer layer, which Lightning's FSDPStrategy takes as a set of classes)."""
    from hydra.utils import get_class

    return {get_class(name) for name in names}
