"""Logits in the teacher-output cache: every logit of a row, or its top k with the row's log-sum-exp.

One row is one example's (B, C) logits for sequence-level losses, or one selected token's vocabulary logits
(B, T, V) at the positions a token-level term reads (the masked positions of masked-LM distillation). Both use
the same files and the same reconstruction: ``<prefix>logits.npy`` (R, C) float32, or with
``teacher.cache_top_k=k`` (k < C) ``<prefix>topk_values.npy`` (R, k) float32, ``<prefix>topk_indices.npy``
(R, k) int32 and ``<prefix>logsumexp.npy`` (R,) float32, from which :func:`dense_logits` rebuilds (R, C)
logits with the tail as one flat bucket or dropped (the teacher renormalised over its top k).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from distill.data.masking import IGNORE

TAILS = ("bucket", "renormalize")


def stored_k(top_k: int | None, classes: int) -> int | None:
    """The k actually stored: None (every logit) without top-k or when k covers every class (dense is smaller)."""
    return top_k if top_k and top_k < classes else None


def logit_bytes(rows: int, classes: int, top_k: int | None) -> int:
    """Bytes of the logit arrays of ``rows`` rows of ``classes`` logits (no .npy headers)."""
    k = stored_k(top_k, classes)
    return rows * (k * 8 + 4) if k else rows * classes * 4


def dense_logits(values: torch.Tensor, indices: torch.Tensor, lse: torch.Tensor, classes: int,
                 tail: str = "bucket") -> torch.Tensor:
    """(B, C) logits from the top-k ``values``/``indices`` (B, k) and the full row's log-sum-exp ``lse`` (B,).

    ``bucket``: the mass outside the top k (``1 − Σ_topk p``, exact from ``lse``) is spread evenly over the other
    ``C − k`` entries, so at temperature 1 the teacher's top-k probabilities and its tail mass are exact (at
    other temperatures the tail is treated as flat). ``renormalize``: the other entries are ``-inf``, i.e. the
    teacher's distribution renormalised over its top k (the soft-KL kernel handles ``-inf`` teacher entries).
    """
    b, k = values.shape
    if tail == "renormalize" or k >= classes:
        fill = torch.full((b, 1), float("-inf"), dtype=torch.float32, device=values.device)
    else:
        top_mass = torch.exp(values - lse[:, None]).sum(dim=-1).clamp(max=1.0)  # (B,)
        rest = (1.0 - top_mass).clamp(min=1e-30) / (classes - k)
        fill = (torch.log(rest) + lse)[:, None]  # (B, 1)
    out = fill.expand(b, classes).clone()
    return out.scatter_(1, indices.long(), values.float())  # (B, C)


class LogitWriter:
    """The logit arrays of a cache being recorded (memory-mapped), filled row by row in any order."""

    def __init__(self, folder: Path, prefix: str, rows: int, classes: int, top_k: int | None) -> None:
        mm = np.lib.format.open_memmap
        self.k = stored_k(top_k, classes)
        if self.k:
            self.values = mm(folder / f"{prefix}topk_values.npy", "w+", np.float32, (rows, self.k))
            self.indices = mm(folder / f"{prefix}topk_indices.npy", "w+", np.int32, (rows, self.k))
            self.lse = mm(folder / f"{prefix}logsumexp.npy", "w+", np.float32, (rows,))
            self.arrays = (self.values, self.indices, self.lse)
        else:
            self.logits = mm(folder / f"{prefix}logits.npy", "w+", np.float32, (rows, classes))
            self.arrays = (self.logits,)

    def write(self, where: np.ndarray, logits: torch.Tensor) -> None:
        """Store ``logits`` (R, C) as rows ``where`` (R,)."""
        logits = logits.float()
        if self.k:
            values, indices = logits.topk(self.k, dim=-1)  # (R, k)
            self.values[where], self.indices[where] = values.numpy(), indices.numpy().astype(np.int32)
            self.lse[where] = torch.logsumexp(logits, dim=-1).numpy()
        else:
            self.logits[where] = logits.numpy()

    def flush(self) -> None:
        for arr in self.arrays:
            arr.flush()


class LogitReader:
    """The logit arrays of a finished cache entry (memory-mapped); :meth:`read` gives dense float32 rows."""

    def __init__(self, folder: Path, prefix: str, classes: int, tail: str) -> None:
        load = lambda name: np.load(folder / f"{prefix}{name}.npy", mmap_mode="r")  # noqa: E731
        self.classes, self.tail = classes, tail
        self.top_k = (folder / f"{prefix}topk_values.npy").is_file()
        if self.top_k:
            self.values, self.indices, self.lse = load("topk_values"), load("topk_indices"), load("logsumexp")
        else:
            self.logits = load("logits")

    def read(self, where: np.ndarray) -> torch.Tensor:
        """(R, C) float32 logits of rows ``where`` (R,): stored ones, or rebuilt from the top k."""
        if not self.top_k:
            return torch.from_numpy(np.asarray(self.logits[where], dtype=np.float32))
        return dense_logits(torch.from_numpy(np.asarray(self.values[where])), torch.from_numpy(np.asarray(self.indices[where])),
                            torch.from_numpy(np.asarray(self.lse[where])), self.classes, self.tail)


def row_ranges(offsets: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """The rows ``offsets[i]:offsets[i + 1]`` of every example ``i`` in ``idx``, concatenated in that order."""
    parts = [np.arange(offsets[i], offsets[i + 1]) for i in idx]
    return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)


def selected_counts(rows: dict[str, list], positions: str) -> np.ndarray:
    """How many token positions of each example a position-level term reads: every real token (``tokens``) or
    the positions static masking chose (``masked``: the labels that are not ``IGNORE``)."""
    if positions == "tokens":
        return np.array([len(r) for r in rows["input_ids"]], dtype=np.int64)
    return np.array([sum(1 for v in r if v != IGNORE) for r in rows["mlm_labels"]], dtype=np.int64)
