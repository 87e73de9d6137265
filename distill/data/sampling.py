"""Training-batch order that survives a restart: torch's shuffle, with a state Lightning checkpoints.

:func:`train_loader` returns a :class:`torchdata.stateful_dataloader.StatefulDataLoader` (Lightning stores
its state in every checkpoint and restores it on resume) whose sampler draws each epoch's permutation
exactly as ``torch.utils.data.RandomSampler`` does — a seed from the global generator at the start of the
epoch, then ``randperm`` — so a fresh run sees the same batches as with a plain ``DataLoader(shuffle=True)``,
and a resumed run the same batches as one that never stopped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized

import torch
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import RandomSampler, _StatefulRandomSamplerIterator


class _EpochIterator(_StatefulRandomSamplerIterator):
    """One epoch's indices. As in torch, the epoch's seed is drawn from the global generator at the first
    index asked for (the data loader draws its own worker seed before that); a restored state skips it."""

    def __init__(self, sampler: TorchOrderRandomSampler) -> None:
        self.sampler, self.n, self.num_samples = sampler, len(sampler.data_source), sampler.num_samples
        self.replacement, self.chunk_size = False, 32
        self.yielded, self.next_yielded, self.perm_index, self.chunk_index = 0, None, 0, 0
        self.perm: list[int] | None = None
        self.generator_state = None

    def __next__(self) -> int:
        if self.perm is None:
            self.sampler.generator.manual_seed(int(torch.empty((), dtype=torch.int64).random_().item()))
            self.generator_state = self.sampler.generator.get_state()
            self.perm = self._get_perm()
        return super().__next__()

    def state_dict(self) -> dict:
        if self.perm is None:  # nothing drawn yet this epoch: a restore draws afresh, as a new epoch does
            return {self._YIELDED: 0, self._GENERATOR: None}
        return super().state_dict()

    def load_state_dict(self, state_dict: dict) -> None:
        if state_dict[self._GENERATOR] is not None:
            super().load_state_dict(state_dict)


class TorchOrderRandomSampler(RandomSampler):
    """torchdata's stateful random sampler, drawing each epoch's order exactly as torch's RandomSampler does."""

    def __init__(self, data_source: Sized) -> None:
        super().__init__(data_source, generator=torch.Generator())  # an explicit generator: no draw at init

    def __iter__(self) -> Iterator[int]:
        return _EpochIterator(self)


def train_loader(dataset: Sized, batch_size: int, collate_fn: Callable, num_workers: int = 0,
                 shuffle: bool = True) -> StatefulDataLoader:
    """A resumable loader over ``dataset``: shuffled in torch's order when ``shuffle``, in order otherwise."""
    sampler = TorchOrderRandomSampler(dataset) if shuffle else None
    return StatefulDataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate_fn,
                              num_workers=num_workers)
