"""Training-batch order that survives a restart: torch's shuffle, with a state Lightning checkpoints.

:func:`train_loader` returns a :class:`torchdata.stateful_dataloader.StatefulDataLoader` (Lightning stores
its state in every checkpoint and restores it on resume) whose sampler draws each epoch's permutation
exactly as ``torch.utils.data.RandomSampler`` does — a seed from the global generator at the start of the
epoch, then ``randperm`` — so a fresh run sees the same batches as with a plain ``DataLoader(shuffle=True)``,
and a resumed run the same batches as one that never stopped.

:class:`LengthGroupedSampler` (``data/sampler=length_grouped``) reorders that same permutation so that each
batch holds examples of similar length (less padding, so fewer FLOPs per example): the shuffled examples are
cut into groups of ``group_batches`` batches, each group is sorted by length and cut into batches, and the
batches of a group are shuffled. Each epoch's order follows from the epoch's seed alone, so it resumes too.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sized

import torch
from torch.utils.data import Sampler
from torchdata.stateful_dataloader import StatefulDataLoader
from torchdata.stateful_dataloader.sampler import (
    RandomSampler,
    StatefulDistributedSampler,
    _StatefulRandomSamplerIterator,
)

from distill.errors import ConfigError


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
    """torchdata's stateful random sampler, drawing each epoch's order exactly as torch's RandomSampler does.

    ``batch_size`` is accepted (and unused) so that every training sampler is built the same way.
    """

    def __init__(self, data_source: Sized, batch_size: int | None = None) -> None:
        super().__init__(data_source, generator=torch.Generator())  # an explicit generator: no draw at init

    def __iter__(self) -> Iterator[int]:
        return _EpochIterator(self)

    def shard(self, num_replicas: int, rank: int, seed: int, drop_last: bool = False) -> Sampler:
        """This sampler for one rank of a DDP run: torchdata's resumable distributed sampler, whose order
        (``seed + epoch``) is the same on every rank and for any world size."""
        return StatefulDistributedSampler(self.data_source, num_replicas=num_replicas, rank=rank, shuffle=True,
                                          seed=seed, drop_last=drop_last)


def example_lengths(data_source: Sized) -> list[int]:
    """Token count of each example: the ``input_ids`` column of a ``datasets.Dataset`` (read without
    building tensors), or ``len(example["input_ids"])`` of any indexable sequence of feature dicts."""
    if hasattr(data_source, "with_format"):
        return [len(ids) for ids in data_source.with_format(None)["input_ids"]]
    return [len(data_source[i]["input_ids"]) for i in range(len(data_source))]


def group_by_length(perm: list[int], lengths: list[int], batch_size: int, group_batches: int,
                    generator: torch.Generator) -> list[int]:
    """``perm`` cut into groups of ``group_batches`` × ``batch_size``, each sorted by length (longest first) and cut
    into batches whose order within the group is shuffled with ``generator``."""
    size = batch_size * group_batches
    out: list[int] = []
    for start in range(0, len(perm), size):
        chunk = sorted(perm[start:start + size], key=lambda i: -lengths[i])  # stable: ties keep perm order
        batches = [chunk[b:b + batch_size] for b in range(0, len(chunk), batch_size)]
        order = torch.randperm(len(batches), generator=generator).tolist()
        out.extend(i for b in order for i in batches[b])
    return out


class ShardedLengthGroupedSampler(StatefulDistributedSampler):
    """Length-grouped order for DDP: every rank draws the same grouped order of global batches (``batch_size`` ×
    ``num_replicas`` examples, from ``seed + epoch``) and takes every ``num_replicas``-th example of it, so each
    rank's batch at a step holds examples of similar length, and so do the ranks' batches of that step (no rank
    waits for a long one). Its position is checkpointed as torchdata's distributed sampler's is."""

    def __init__(self, dataset: Sized, num_replicas: int, rank: int, seed: int, drop_last: bool, batch_size: int,
                 group_batches: int, lengths: list[int]) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
        self.batch_size, self.group_batches, self.lengths = batch_size, group_batches, lengths

    def __iter__(self) -> Iterator[int]:
        self.yielded, self.next_yielded = (self.next_yielded or 0), None
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        order = group_by_length(torch.randperm(len(self.dataset), generator=g).tolist(), self.lengths,
                                self.batch_size * self.num_replicas, self.group_batches, g)
        if self.drop_last:
            order = order[:self.total_size]
        else:  # as torch's DistributedSampler: repeat the head so every rank gets the same count
            order = (order * math.ceil(self.total_size / len(order)))[:self.total_size]
        for idx in itertools.islice(order[self.rank:self.total_size:self.num_replicas], self.yielded, None):
            self.yielded += 1
            yield idx


class _GroupedEpochIterator(_EpochIterator):
    def _get_perm(self) -> list[int]:
        return self.sampler.group(super()._get_perm())


class LengthGroupedSampler(TorchOrderRandomSampler):
    """Batches of similar length, shuffled in groups (the megabatch scheme of Hugging Face's Trainer).

    Each epoch takes torch's shuffled order, cuts it into groups of ``group_batches`` × ``batch_size``
    examples, sorts each group by length (longest first) and cuts it into batches, then shuffles the order
    of the batches within the group with the epoch's generator. Every example is seen once per epoch; larger
    groups mean less padding and less randomness in which examples share a batch.
    """

    def __init__(self, data_source: Sized, batch_size: int, group_batches: int = 50) -> None:
        super().__init__(data_source)
        if isinstance(group_batches, bool) or not isinstance(group_batches, int) or group_batches < 1:
            raise ConfigError(f"data.sampler.group_batches={group_batches!r} must be a whole number >= 1.")
        self.batch_size, self.group_batches = int(batch_size), group_batches
        self.lengths = example_lengths(data_source)

    def group(self, perm: list[int]) -> list[int]:
        """``perm`` reordered into length-sorted batches, batch order shuffled within each group."""
        return group_by_length(perm, self.lengths, self.batch_size, self.group_batches, self.generator)

    def shard(self, num_replicas: int, rank: int, seed: int, drop_last: bool = False) -> Sampler:
        """This order for one rank of a DDP run (see :class:`ShardedLengthGroupedSampler`)."""
        return ShardedLengthGroupedSampler(self.data_source, num_replicas, rank, seed, drop_last, self.batch_size,
                                           self.group_batches, self.lengths)

    def __iter__(self) -> Iterator[int]:
        return _GroupedEpochIterator(self)


def train_loader(dataset: Sized, batch_size: int, collate_fn: Callable, num_workers: int = 0,
                 shuffle: bool = True, sampler: Callable[..., Sampler] | None = None,
                 pin_memory: bool = False) -> StatefulDataLoader:
    """A resumable loader over ``dataset``: with ``shuffle``, in the order of ``sampler(dataset, batch_size=...)``
    (default: torch's shuffle, :class:`TorchOrderRandomSampler`); in dataset order otherwise."""
    factory = sampler if sampler is not None else TorchOrderRandomSampler
    order = factory(dataset, batch_size=batch_size) if shuffle else None
    return StatefulDataLoader(dataset, batch_size=batch_size, sampler=order, collate_fn=collate_fn,
                              num_workers=num_workers, pin_memory=pin_memory,
                              persistent_workers=num_workers > 0)
