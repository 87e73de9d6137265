"""Atomic checkpoint writes and finding the checkpoint to resume from."""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

log = logging.getLogger("distill")


def replace_atomically(path: str | Path, write: Any) -> Path:
    """Call ``write(tmp_path)`` then move the temporary file onto ``path`` (readers never see half a file).

    The temporary file sits beside ``path`` (same file system, so ``os.replace`` is atomic on POSIX) and is
    removed if writing fails. Used for phase results, reports and charts; Lightning checkpoints go through
    :class:`AtomicCheckpointIO`.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # only left when writing failed
    return path


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O, but a file appears only when complete.

    The checkpoint is written to a temporary file in the target folder, flushed to disk, then
    renamed over the destination with ``os.replace`` (atomic on POSIX), so a run killed mid-write
    leaves the previous checkpoint intact instead of a truncated one.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


class ResumableCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that a killed and resumed run ships from exactly as if never stopped.

    * **Resumed into another folder** (``ckpt_path=auto`` adopting an unfinished identical run, which runs in a
      new timestamped folder, or ``ckpt_path=<another run's last.ckpt>``): Lightning reloads the best score and
      the top-k checkpoints only when the checkpoint folder is unchanged, so the first validation after such a
      resume always became ``best.ckpt`` and the shipped student could differ. Here they are restored whatever
      the folder, the paths moved into this folder under their own names, and the files copied there
      (atomically, rank 0) when training starts; when a file is gone from both folders, Lightning's
      behaviour (with its warning) is kept.
    * **``last.ckpt`` at every epoch end**: Lightning 2.6 rewrites it only when a top-k checkpoint was written
      at the same step, so an epoch that did not beat the best left it one epoch (or more) behind.
    * **No warning before the first validation**: a fit that stops before it validates (a MobileBERT layer
      phase of 20 steps) has no score to rank; Lightning then warns that the monitored key is missing and saves
      nothing. Here it saves nothing without the warning; a missing key after a validation still raises.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._to_copy: dict[str, str] = {}  # a best checkpoint of the resumed run -> its path in this folder
        self._last_saved_at = -1  # global step of the last write of last.ckpt

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old_dir = state_dict.get("dirpath", self.dirpath)
        if self.dirpath is None or old_dir == self.dirpath or state_dict.get("monitor") != self.monitor:
            super().load_state_dict(state_dict)
            return
        here = lambda path: str(Path(self.dirpath) / Path(path).name) if path else ""  # noqa: E731
        kept = (set(state_dict.get("best_k_models", {})) | {state_dict["best_model_path"]}) - {""}
        sources = {p: next((f for f in (p, here(p)) if Path(f).is_file()), None) for p in kept}
        if None in sources.values():
            missing = sorted(p for p, f in sources.items() if f is None)
            log.warning("Cannot carry the resumed run's best checkpoints %s into %s: they are gone", missing, self.dirpath)
            super().load_state_dict(state_dict)
            return
        self._to_copy = {f: here(p) for p, f in sources.items() if Path(f).resolve() != Path(here(p)).resolve()}
        self.best_model_score = state_dict["best_model_score"]
        self.best_model_path = here(state_dict["best_model_path"])
        self.best_k_models = {here(p): v for p, v in state_dict.get("best_k_models", {}).items()}
        self.kth_best_model_path = here(state_dict.get("kth_best_model_path", ""))
        self.kth_value = state_dict.get("kth_value", self.kth_value)
        self.last_model_path = here(state_dict.get("last_model_path", ""))

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if self._to_copy:
            if trainer.is_global_zero:
                for source, target in self._to_copy.items():
                    Path(target).parent.mkdir(parents=True, exist_ok=True)
                    replace_atomically(target, lambda tmp, source=source: shutil.copyfile(source, tmp))
                    log.info("Carried the best checkpoint %s over to %s", source, target)
            self._to_copy = {}
            trainer.strategy.barrier("best-checkpoints-carried")

    def _save_topk_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        if (self.monitor is not None and self.monitor not in monitor_candidates
                and not trainer.fit_loop.epoch_loop.val_loop._has_run):
            return  # nothing validated yet: nothing to rank (Lightning would warn and save nothing)
        super()._save_topk_checkpoint(trainer, monitor_candidates)

    def _save_last_checkpoint(self, trainer: L.Trainer, monitor_candidates: dict[str, Any]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_saved_at = trainer.global_step

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def _refresh_last(self, trainer: L.Trainer) -> None:
        if (self.save_last and trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking
                and not trainer.fast_dev_run and trainer.global_step > 0 and self._last_saved_at != trainer.global_step):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))


def restart_ranking(trainer: L.Trainer) -> None:
    """Forget every best checkpoint the trainer's checkpoint callbacks have ranked so far (and remove their
    files, rank 0): the next validation is saved as the new best. For a callback that changes the model in a
    way earlier checkpoints do not have (magnitude pruning reaching its target sparsity), so that an earlier,
    better-scoring checkpoint is not the model shipped."""
    for callback in getattr(trainer, "checkpoint_callbacks", []):
        if getattr(callback, "monitor", None) is None or not hasattr(callback, "best_k_models"):
            continue
        for path in list(callback.best_k_models):
            trainer.strategy.remove_checkpoint(path)
        callback.best_k_models, callback.best_model_score = {}, None
        callback.best_model_path = callback.kth_best_model_path = ""


class RNGState(L.Callback):
    """Keep the random generators' states in every checkpoint and restore them on resume.

    With the data loader's own state (:class:`torchdata.stateful_dataloader.StatefulDataLoader`), this makes
    a run killed mid-epoch and resumed draw the same dropout masks and batch orders as one that never
    stopped. States are stored as tensors and plain lists, so checkpoints still load with
    ``torch.load(..., weights_only=True)``. A loaded state is applied at the first training batch after the
    restore, not at load time: Lightning draws from the generators in between (the resumed epoch's data
    iterator seeds its shuffle), which the uninterrupted run did at the start of the epoch instead.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        version, numbers, gauss = random.getstate()
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state = {"torch": torch.get_rng_state(), "python": [version, list(numbers), gauss],
                 "numpy": [name, keys.tolist(), pos, has_gauss, cached]}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict

    def on_train_batch_start(self, trainer, pl_module, batch: Any, batch_idx: int) -> None:
        if self._pending is not None:
            self._restore(self._pending)
            self._pending = None

    @staticmethod
    def _restore(state_dict: dict[str, Any]) -> None:
        torch.set_rng_state(state_dict["torch"])
        version, numbers, gauss = state_dict["python"]
        random.setstate((version, tuple(numbers), gauss))
        name, keys, pos, has_gauss, cached = state_dict["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        if "cuda" in state_dict and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])


def run_signature(run_dir: Path) -> str | None:
    """What makes two runs "the same run" for resuming: the composed config Hydra saved for the job
    (``.hydra/config.yaml``: every preset's content, not just the command line, so editing a preset file
    starts a fresh run) plus the command-line overrides. None when the folder has neither file."""
    parts = [run_dir / ".hydra" / name for name in ("config.yaml", "overrides.yaml")]
    if not any(p.is_file() for p in parts):
        return None
    return "\n---\n".join(p.read_text() if p.is_file() else "" for p in parts)


def find_resume_checkpoint(ckpt_path: str | None, output_dir: Path, search_root: Path | None) -> str | None:
    """Resolve ``ckpt_path``: an explicit file, ``null`` (start fresh) or ``auto``.

    ``auto`` takes ``last.ckpt`` of this run directory if it exists, else that of the newest
    unfinished run (no ``report.json``) under ``search_root`` with the same :func:`run_signature`.
    """
    if ckpt_path in (None, "", "none"):
        return None
    if ckpt_path != "auto":
        return ckpt_path
    own = output_dir / "checkpoints" / "last.ckpt"
    if own.is_file():
        return str(own)
    if search_root is None or not search_root.is_dir():
        return None
    mine = run_signature(output_dir)
    if mine is None:
        return None
    candidates = []
    for last in search_root.glob("**/checkpoints/last.ckpt"):
        run = last.parent.parent
        if run == output_dir or (run / "report.json").exists():
            continue
        if run_signature(run) == mine:
            candidates.append(last)
    return str(max(candidates, key=lambda p: p.stat().st_mtime)) if candidates else None
