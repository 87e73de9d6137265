"""Calibration batches for importance estimation: the first ``n`` shuffled batches of a task's training set."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import islice
from typing import Any

import torch
from torch import Tensor


def take_batches(batches: Iterable[Mapping[str, Tensor]], n: int) -> list[Mapping[str, Tensor]]:
    """The first ``n`` batches of ``batches`` (all of them when there are fewer)."""
    return list(islice(iter(batches), n))


def seeded_batches(loader: Iterable[Mapping[str, Tensor]], n: int, seed: int) -> list[Mapping[str, Tensor]]:
    """The first ``n`` batches of ``loader``, its shuffle seeded by ``seed`` inside a forked RNG, so drawing them
    does not move the global RNG that the run's own initialisation and data order depend on."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return take_batches(loader, n)


def task_batches(data: Mapping[str, Any], tokenizer: str, n: int, seed: int = 0) -> list[dict[str, Tensor]]:
    """``n`` training batches of the GLUE task described by ``data`` (``GLUEDataModule`` arguments), drawn by
    :func:`seeded_batches`."""
    from distill.data.glue import GLUEDataModule

    dm = GLUEDataModule(**{**dict(data), "tokenizer": tokenizer})
    dm.check_files()
    dm.setup("fit")
    return seeded_batches(dm.train_dataloader(), n, seed)
