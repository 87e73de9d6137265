"""Atomic checkpoint writes and finding the checkpoint to resume from."""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO


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
