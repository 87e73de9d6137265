"""Validation of the composed config and of teacher/student fit, before any heavy work."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig

from distill.errors import ConfigError, DistillError


def build(node: Any, key: str, **objects: Any) -> Any:
    """``hydra.utils.instantiate`` that turns a failure into one sentence naming the config key.

    Live objects (models, configs, modules) are passed to the constructor directly, not merged into
    the config, so OmegaConf never tries to convert them. Our own ``DistillError``s raised inside
    constructors pass through unchanged.
    """
    try:
        if not objects:
            return instantiate(node)
        factory = instantiate(node, _partial_=True)
    except InstantiationException as err:
        raise _as_config_error(err, key) from None
    try:
        return factory(**objects)
    except TypeError as err:
        raise ConfigError(f"{key} could not be built: {err}") from None


def _as_config_error(err: Exception, key: str) -> DistillError:
    cause = err.__cause__
    while cause is not None and not isinstance(cause, DistillError) and cause.__cause__ is not None:
        cause = cause.__cause__
    if isinstance(cause, DistillError):
        return cause
    text = str(cause or err).strip()
    reason = text.splitlines()[-1] if text else type(err).__name__
    return ConfigError(f"{key} could not be built: {reason}")


def _positive(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and value > 0


def check_checkpoint(path: Any, key: str = "ckpt_path") -> None:
    """A checkpoint to resume from must be a complete Lightning checkpoint; one sentence otherwise.

    It is read with ``weights_only=True`` (tensors and plain containers only: no code runs from the file).
    """
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{key}={path!r} must be null, auto or a checkpoint file.")
    if not Path(path).is_file():
        raise ConfigError(f"{key}={path!r} is not a file; give a checkpoint (e.g. <run>/checkpoints/last.ckpt), "
                          "auto or null.")
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - truncated zip, wrong format, unsafe pickle: all one answer
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{key}={path!r} is not a readable checkpoint ({reason[:120]}); it may be truncated or "
                          "corrupt: pass another, auto or null.") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "global_step" not in ckpt:
        raise ConfigError(f"{key}={path!r} is not a Lightning checkpoint of a distill run (no state_dict / "
                          "global_step).")


def validate(cfg: DictConfig) -> None:
    """Cheap checks of the top-level keys; deeper checks happen as each object is built (all before any work)."""
    stage = cfg.get("stage")
    if not isinstance(stage, DictConfig) or not stage.get("_target_"):
        raise ConfigError(f"stage={stage!r} is not a stage preset; use stage=teacher, distill, eval or general.")
    if cfg.ckpt_path not in (None, "auto"):
        check_checkpoint(cfg.ckpt_path)
    if cfg.eval.split not in ("train", "dev"):
        raise ConfigError(f"eval.split={cfg.eval.split!r} is not allowed; use train or dev.")
    lr = (cfg.get("optimizer") or {}).get("lr")
    if lr is not None and not _positive(lr):
        raise ConfigError(f"optimizer.lr={lr!r} must be a positive number.")
    check_trainer_scale(cfg.get("trainer") or {})
    epochs = (cfg.get("trainer") or {}).get("max_epochs")
    if epochs is not None and (isinstance(epochs, bool) or not isinstance(epochs, int) or (epochs < 1 and epochs != -1)):
        raise ConfigError(f"trainer.max_epochs={epochs!r} must be a positive whole number (or -1 with trainer.max_steps).")
    check_speed_options(cfg)


def _whole(value: Any, low: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= low


def _devices_ok(devices: Any) -> bool:
    """What Lightning takes: N >= 1, -1 (all), auto, "N", "-1", "0,1" or a list of device indices."""
    if devices == "auto" or devices == -1 or _whole(devices, 1):
        return True
    if isinstance(devices, str):
        parts = [p.strip() for p in devices.strip(",").split(",")]
        return devices.strip() == "-1" or (bool(parts) and all(p.isdigit() for p in parts) and devices != "0")
    return isinstance(devices, Sequence) and bool(devices) and all(_whole(d, 0) for d in devices)


def check_trainer_scale(trainer: Any) -> None:
    """``trainer.strategy`` / ``devices`` / ``num_nodes``: values Lightning accepts, and what the machine and a
    SLURM allocation offer, checked before the teacher is fine-tuned or any data is read."""
    strategy = trainer.get("strategy")
    if strategy is not None and not (isinstance(strategy, Mapping) and strategy.get("_target_")):
        from lightning.pytorch.strategies import StrategyRegistry

        names = sorted(n for n in StrategyRegistry.available_strategies() if "spawn" not in n and "fork" not in n
                       and "notebook" not in n and "xla" not in n and "tpu" not in n)
        if strategy == "auto":
            pass
        elif not isinstance(strategy, str) or strategy not in names:
            raise ConfigError(f"trainer.strategy={strategy!r} is not allowed; use auto, one of {', '.join(names)}, or a "
                              "node with _target_ (trainer=ddp, ddp_cpu or fsdp).")
    accelerator = str(trainer.get("accelerator", "auto"))
    target = str(strategy.get("_target_")) if isinstance(strategy, Mapping) else str(strategy)
    backend = strategy.get("process_group_backend") if isinstance(strategy, Mapping) else None
    if backend == "nccl" and accelerator == "cpu":
        raise ConfigError("trainer.strategy.process_group_backend=nccl runs on CUDA GPUs only, not "
                          "trainer.accelerator=cpu; on CPU use gloo (trainer=ddp_cpu or trainer=fsdp_cpu).")
    if "fsdp" in target.lower() and accelerator not in ("gpu", "cuda", "auto") and target != "distill.distributed.FSDPStrategy":
        raise ConfigError(f"trainer.strategy={target} runs on CUDA GPUs only (Lightning's FSDP), not "
                          f"trainer.accelerator={accelerator}; on CPU use trainer=fsdp_cpu or trainer=ddp_cpu.")
    devices, nodes = trainer.get("devices", "auto"), trainer.get("num_nodes", 1)
    if not _devices_ok(devices):
        raise ConfigError(f"trainer.devices={devices!r} must be a positive number of devices, -1 (all), auto, or "
                          "a list of device indices such as [0,1].")
    if not _whole(nodes, 1):
        raise ConfigError(f"trainer.num_nodes={nodes!r} must be a positive whole number of machines.")
    if accelerator in ("gpu", "cuda"):
        import torch

        have = torch.cuda.device_count()
        if have == 0:
            raise ConfigError(f"trainer.accelerator={accelerator} needs a CUDA GPU and this machine has "
                              "none; use trainer=cpu, or trainer=ddp_cpu for several processes.")
        if _whole(devices, 1) and devices > have:
            raise ConfigError(f"trainer.devices={devices} asks for {devices} GPUs but this machine has {have}.")
    _check_slurm_tasks(devices, nodes)


def _check_slurm_tasks(devices: Any, nodes: Any) -> None:
    """Inside a SLURM job Lightning runs one process per task: the trainer must ask for exactly the tasks the
    allocation has (conf/hydra/launcher/slurm.yaml derives them from the trainer, so they match there)."""
    per_node = os.environ.get("SLURM_NTASKS_PER_NODE", "")
    if not per_node.isdigit() or os.environ.get("SLURM_JOB_NAME") in ("bash", "interactive"):
        return  # not a batch SLURM job (Lightning ignores interactive ones too)
    if devices != int(per_node):
        raise ConfigError(f"trainer.devices={devices!r} must equal the SLURM job's tasks per node ({per_node}); set "
                          f"trainer.devices={per_node} or hydra.launcher.tasks_per_node.")
    slurm_nodes = os.environ.get("SLURM_NNODES", "")
    if slurm_nodes.isdigit() and nodes != int(slurm_nodes):
        raise ConfigError(f"trainer.num_nodes={nodes!r} must equal the SLURM job's nodes ({slurm_nodes}).")


def check_pair(student, teacher, tokenizer, student_tokenizer=None) -> None:
    """Refuse a student that can't learn from this teacher: vocabulary, tokenizer and label count must match.

    ``student_tokenizer``: the student's own tokenizer when it differs from the teacher's (``student.tokenizer``);
    the vocabularies may then differ, and the student's must hold every id of its own tokenizer.
    """
    s, t = student.config, teacher.config
    if student_tokenizer is not None:
        if len(student_tokenizer) > s.vocab_size:
            raise ConfigError(
                f"student.tokenizer has {len(student_tokenizer)} tokens but the student's vocabulary has "
                f"{s.vocab_size}; build the student for its own tokenizer (a student preset with student.tokenizer "
                f"set) or use a tokenizer of the student's checkpoint."
            )
    elif s.vocab_size != t.vocab_size:
        raise ConfigError(
            f"student vocabulary ({s.vocab_size} tokens) does not match the teacher's ({t.vocab_size}); "
            f"the student must use the teacher's tokenizer (or name its own with student.tokenizer)."
        )
    if len(tokenizer) > t.vocab_size:
        raise ConfigError(
            f"the tokenizer has {len(tokenizer)} tokens but the teacher's vocabulary has {t.vocab_size}; "
            f"use the teacher's own tokenizer."
        )
    if s.num_labels != t.num_labels:
        raise ConfigError(f"student has {s.num_labels} labels but the teacher has {t.num_labels}.")
    if getattr(s, "max_position_embeddings", 0) < getattr(t, "max_position_embeddings", 0):
        raise ConfigError(
            f"student.max_position_embeddings={s.max_position_embeddings} is shorter than the teacher's "
            f"{t.max_position_embeddings}."
        )


PRECISIONS = ("32-true", "32", "16-mixed", "bf16-mixed", "bf16-true", "16-true", "64-true", "transformer-engine")
COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def check_speed_options(cfg: DictConfig) -> None:
    """``trainer.precision``, ``compile.*`` and ``teacher.cache*``: one sentence naming the key, before any work."""
    from distill.teacher_cache import check_settings

    precision = str((cfg.get("trainer") or {}).get("precision", "32-true"))
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision!r} is not allowed; use one of {', '.join(PRECISIONS)} "
                          "(bf16-mixed on CPUs with bfloat16 support, 16-mixed / bf16-mixed on GPUs).")
    accelerator = str((cfg.get("trainer") or {}).get("accelerator", "auto"))
    if precision == "16-mixed" and accelerator == "cpu":
        raise ConfigError("trainer.precision=16-mixed needs a GPU; on trainer.accelerator=cpu use bf16-mixed or 32-true.")
    options = cfg.get("compile") or {}
    if not isinstance(options.get("enabled", False), bool):
        raise ConfigError(f"compile.enabled={options.get('enabled')!r} must be true or false.")
    if options.get("mode") not in COMPILE_MODES:
        raise ConfigError(f"compile.mode={options.get('mode')!r} is not allowed; use null or one of "
                          f"{', '.join(m for m in COMPILE_MODES if m)}.")
    if options.get("enabled"):
        import torch._dynamo

        backends = torch._dynamo.list_backends(exclude_tags=())
        if options.get("backend", "inductor") not in backends:
            raise ConfigError(f"compile.backend={options.get('backend')!r} is not a torch.compile backend; use one of "
                              f"{', '.join(sorted(backends))}.")
    if cfg.get("teacher") is not None:
        check_settings(cfg.teacher)
