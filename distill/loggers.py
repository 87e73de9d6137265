"""Experiment logging helpers: a Weights & Biases logger that goes offline by itself, the resolved config as
hyperparameters, and a throughput callback.

* :func:`wandb_logger` — what ``conf/logger/wandb.yaml`` builds. Without an API key (``WANDB_API_KEY`` or a
  netrc entry for the W&B host) it logs offline into ``<save_dir>/wandb`` and says so in one line; an explicit
  ``WANDB_MODE`` (``online``, ``offline``, ``disabled``) always wins. All runs of one command share a group
  (:func:`command_group`) and a phase's run is named ``<name>-<phase>``.
* :func:`log_config` — send the resolved Hydra config (plus the chosen presets) to every logger.
* :class:`ThroughputMonitor` — examples/s and tokens/s of training, logged every few batches.
"""

from __future__ import annotations

import json
import netrc
import os
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

DEFAULT_WANDB_HOST = "https://api.wandb.ai"
OFFLINE_MODES = {"offline", "dryrun"}
_PROCESS_START = time.strftime("%Y-%m-%d_%H-%M-%S")  # the group of runs made outside Hydra


# ---- Weights & Biases --------------------------------------------------------------------------
def _netrc_path() -> Path:
    if os.environ.get("NETRC"):
        return Path(os.environ["NETRC"]).expanduser()
    name = "_netrc" if sys.platform == "win32" else ".netrc"
    return Path.home() / name


def wandb_api_key() -> str | None:
    """The W&B API key this machine is configured with (env ``WANDB_API_KEY`` or a netrc entry), if any."""
    key = os.environ.get("WANDB_API_KEY", "").strip()
    if key:
        return key
    host = urlsplit(os.environ.get("WANDB_BASE_URL") or DEFAULT_WANDB_HOST).netloc
    try:
        creds = netrc.netrc(str(_netrc_path())).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return None
    return creds[2] if creds and creds[2] else None


def wandb_mode(offline: bool = False) -> str:
    """``online``, ``offline`` or ``disabled``: ``WANDB_MODE`` if set, else offline when asked or without a key."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        return "offline" if env in OFFLINE_MODES else env
    if offline or wandb_api_key() is None:
        return "offline"
    return "online"


def _hydra_dirs() -> tuple[Path, Path] | None:
    """(this job's output dir, the command's dir: the run dir, or the sweep dir of a multirun), under Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        job = Path(hc.runtime.output_dir)
        return job, Path(str(hc.sweep.dir)) if hc.mode == RunMode.MULTIRUN else job
    except (ValueError, AttributeError, TypeError):  # not inside a Hydra app, or a config without those nodes
        return None


def command_group(prefix: str | None = None) -> str:
    """The W&B group of every run this command makes: ``WANDB_RUN_GROUP`` if set, else ``<prefix>-<folder>``
    with the folder of the Hydra run (or of the multirun's sweep), else ``<prefix>-<start time>`` of this process.

    Under Hydra the group follows from the command's folder, so DDP workers (relaunched with the same
    ``hydra.run.dir``) and every phase of the run agree on it.
    """
    group = os.environ.get("WANDB_RUN_GROUP", "").strip()
    if group:
        return group
    dirs = _hydra_dirs()
    stamp = dirs[1].name if dirs else _PROCESS_START
    return f"{prefix}-{stamp}" if prefix else stamp


def phase_of(save_dir: str | os.PathLike) -> str | None:
    """The phase a logger's folder belongs to, relative to the Hydra job's folder: ``phases/2-prediction`` →
    ``prediction``, ``general`` → ``general``; None for the job's folder itself or outside Hydra."""
    dirs = _hydra_dirs()
    if dirs is None:
        return None
    try:
        rel = Path(save_dir).resolve().relative_to(dirs[0].resolve())
    except ValueError:
        return None
    if not rel.parts:
        return None
    return re.sub(r"^\d+-", "", rel.parts[-1])


def wandb_logger(save_dir: str | os.PathLike = ".", offline: bool = False, log_model: bool | str = False,
                 name: str | None = None, group: str | None = None, phase: str | None = None, **kwargs: Any):
    """A Lightning ``WandbLogger`` that runs offline (with a one-line notice) when no API key is configured.

    Arguments are those of ``lightning.pytorch.loggers.WandbLogger``. An explicit ``WANDB_MODE`` environment
    variable is respected: ``offline`` (or ``dryrun``), ``disabled`` (nothing is logged) or ``online``.
    A run still open in this process (the previous job of a Hydra multirun) is finished first, so each job
    gets its own W&B run. ``group`` null: :func:`command_group` (one group per command). ``phase`` (null: from
    ``save_dir``, see :func:`phase_of`) names the run ``<name>-<phase>``. wandb's own banner is left out
    (offline: entirely, the notice says where the run is; online: all but the run's address).
    """
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    phase = phase or phase_of(save_dir)
    kwargs["name"] = f"{name}-{phase}" if name and phase else name
    kwargs["group"] = group or command_group(name)
    explicit = bool(os.environ.get("WANDB_MODE", "").strip())
    mode = wandb_mode(offline)
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    if mode == "offline" and not explicit and not offline:
        print(f"wandb: no API key found; logging offline to {save_dir / 'wandb'} "
              f"(set WANDB_API_KEY or run `wandb login` to sync)", file=sys.stderr, flush=True)
    if mode != "online":
        log_model = False  # checkpoints can't be uploaded offline (Lightning refuses the combination)
    # Pass the mode to wandb.init explicitly: wandb keeps the settings of its first setup in this process
    # (e.g. an earlier WANDB_MODE=disabled), and only init arguments override them.
    kwargs["mode"] = mode
    if "settings" not in kwargs:
        kwargs["settings"] = wandb.Settings(silent=True) if mode == "offline" else wandb.Settings(quiet=True)
    if wandb.run is not None:
        wandb.finish()
    logger = WandbLogger(save_dir=str(save_dir), offline=mode == "offline", log_model=log_model, **kwargs)
    if logger._wandb_init.get("anonymous") is None:  # Lightning always passes it; wandb warns that it is unused
        logger._wandb_init.pop("anonymous", None)
    return logger


# ---- config as hyperparameters -----------------------------------------------------------------
def config_to_hparams(cfg: DictConfig) -> dict[str, Any]:
    """The resolved config as a plain dict (without Hydra's own node), plus ``presets``: the chosen preset of
    each config group (``student: tiny``, ``loss: kd``, ...) when running under Hydra."""
    params: dict[str, Any] = {}
    for key in cfg:
        if key == "hydra":  # Hydra's own node (present in composed test configs); not resolvable outside a job
            continue
        value = cfg[key]
        params[str(key)] = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    try:
        from hydra.core.hydra_config import HydraConfig

        choices = HydraConfig.get().runtime.choices
        params["presets"] = {k: v for k, v in choices.items() if not k.startswith("hydra/") and k != "hydra"}
    except (ValueError, AttributeError):  # not inside a Hydra app
        pass
    return params


def log_config(loggers, cfg: DictConfig) -> dict[str, Any]:
    """Log the resolved ``cfg`` as hyperparameters to each logger (a list, one logger, or a Trainer's
    ``loggers``); returns what was logged."""
    if loggers is None or loggers is False:
        return {}
    if isinstance(loggers, L.pytorch.loggers.Logger):
        loggers = [loggers]
    params = config_to_hparams(cfg)
    for logger in loggers:
        logger.log_hyperparams(params)
    return params


# ---- throughput --------------------------------------------------------------------------------
def _batch_counts(batch: Any) -> tuple[int, int]:
    """(examples, real tokens) of a tokenized batch: the attention mask's sum, or the ids' size."""
    if isinstance(batch, Mapping):  # dicts and transformers' BatchEncoding
        mask = batch.get("attention_mask")
        ids = batch.get("input_ids")
        ref = ids if ids is not None else mask if mask is not None else next(
            (v for v in batch.values() if isinstance(v, torch.Tensor)), None)
        if ref is None:
            return 0, 0
        examples = int(ref.shape[0])
        if mask is not None:
            return examples, int(mask.sum().item())
        return examples, int(ids.numel()) if ids is not None else 0
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return int(batch[0].shape[0]), int(batch[0].numel()) if batch[0].dim() > 1 else 0
    return 0, 0


class ThroughputMonitor(L.Callback):
    """Log training throughput every ``every_n_batches`` batches (default: the Trainer's ``log_every_n_steps``).

    Logged to every logger at the current global step: ``throughput/examples_per_s`` and
    ``throughput/tokens_per_s`` (non-padding tokens, from the attention mask) over the interval's wall time,
    data loading included and validation excluded.
    """

    def __init__(self, every_n_batches: int | None = None, prefix: str = "throughput/") -> None:
        super().__init__()
        if every_n_batches is not None and every_n_batches < 1:
            raise ValueError(f"every_n_batches={every_n_batches} must be >= 1")
        self.every_n_batches = every_n_batches
        self.prefix = prefix
        self.last: dict[str, float] = {}
        self._reset()

    def _reset(self) -> None:
        self._t0 = time.perf_counter()
        self._batches = self._examples = self._tokens = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._reset()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._reset()  # don't count validation time as training time

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        examples, tokens = _batch_counts(batch)
        self._batches += 1
        self._examples += examples
        self._tokens += tokens
        every = self.every_n_batches or max(1, int(trainer.log_every_n_steps))
        if self._batches < every:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        self.last = {f"{self.prefix}examples_per_s": self._examples / elapsed,
                     f"{self.prefix}tokens_per_s": self._tokens / elapsed,
                     f"{self.prefix}batches_per_s": self._batches / elapsed}
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_metrics(self.last, step=trainer.global_step)
        self._reset()


class TrainingClock(L.Callback):
    """Time the training steps of a fit (what ``scripts/bench_throughput.py`` compares) and write them to ``path``.

    Per epoch, the clock runs from the start of the first counted batch to the end of the epoch's last batch
    (data loading between batches included); the first ``skip_batches`` batches of the fit warm up allocators
    and kernels and are not counted. Validation, epoch-end checkpoints and everything before and after the fit
    are outside it. Writes ``{"examples", "tokens", "seconds", "steps"}`` as JSON at the end of the fit.
    """

    def __init__(self, path: str, skip_batches: int = 5) -> None:
        super().__init__()
        self.path, self.skip = Path(path), int(skip_batches)
        self.examples = self.tokens = self.steps = self._seen = 0
        self.seconds = 0.0
        self._t0: float | None = None
        self._last = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._seen += 1
        if self._seen > self.skip and self._t0 is None:
            self._t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._t0 is None:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        examples, tokens = _batch_counts(batch)
        self.examples, self.tokens, self.steps = self.examples + examples, self.tokens + tokens, self.steps + 1
        self._last = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._t0 is not None:
            self.seconds += self._last - self._t0
            self._t0 = None

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"examples": self.examples, "tokens": self.tokens,
                                             "seconds": self.seconds, "steps": self.steps}))
