"""Training order: torch's shuffle, and length-grouped batches that still resume exactly."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from distill.data.sampling import LengthGroupedSampler, TorchOrderRandomSampler, train_loader
from distill.errors import ConfigError


def dataset(n: int = 200, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 60, (n,), generator=g).tolist()
    return [{"input_ids": list(range(k)), "i": i} for i, k in enumerate(lengths)]


def collate(rows):
    return [r["i"] for r in rows]


def epoch(loader, seed: int) -> list[list[int]]:
    torch.manual_seed(seed)
    return list(loader)


def padding(batches, data) -> int:
    return sum(max(len(data[i]["input_ids"]) for i in b) * len(b) - sum(len(data[i]["input_ids"]) for i in b)
               for b in batches)


def test_torch_order_is_exactly_dataloader_shuffle():
    data = dataset()
    ours = epoch(train_loader(data, 16, collate), 5)
    torch_order = epoch(DataLoader(data, batch_size=16, shuffle=True, collate_fn=collate), 5)
    assert ours == torch_order


def test_length_grouped_batches_see_every_example_once_sorted_within_groups_and_pad_less():
    data = dataset()
    grouped = epoch(train_loader(data, 16, collate, sampler=lambda d, batch_size: LengthGroupedSampler(d, batch_size, 4)), 5)
    plain = epoch(train_loader(data, 16, collate), 5)
    assert sorted(i for b in grouped for i in b) == list(range(len(data)))
    lengths = [[len(data[i]["input_ids"]) for i in b] for b in grouped]
    assert all(batch == sorted(batch, reverse=True) for batch in lengths)
    # a group (4 batches of 16) is the same set of examples as the plain shuffle's 64 examples there
    flat_g, flat_p = [i for b in grouped for i in b], [i for b in plain for i in b]
    for start in range(0, len(data), 64):
        assert set(flat_g[start:start + 64]) == set(flat_p[start:start + 64])
    assert padding(grouped, data) < 0.5 * padding(plain, data)


def test_batch_order_within_a_group_is_shuffled_not_longest_first_every_time():
    data = dataset(n=640)
    loader = train_loader(data, 16, collate, sampler=lambda d, batch_size: LengthGroupedSampler(d, batch_size, 40))
    firsts = []
    for seed in range(6):
        first = epoch(loader, seed)[0]
        firsts.append(max(len(data[i]["input_ids"]) for i in first))
    assert len(set(firsts)) > 1  # the longest batch does not always come first


def test_length_grouped_order_follows_the_seed_and_resumes_mid_epoch():
    data = dataset()
    make = lambda: train_loader(data, 16, collate, sampler=lambda d, batch_size: LengthGroupedSampler(d, batch_size, 4))  # noqa: E731
    full = epoch(make(), 7)
    assert full == epoch(make(), 7) and full != epoch(make(), 8)
    torch.manual_seed(7)
    loader = make()
    it = iter(loader)
    head = [next(it) for _ in range(5)]
    state = loader.state_dict()
    resumed = make()
    resumed.load_state_dict(state)
    torch.manual_seed(123)  # a restored loader must not depend on the generator's state at restore
    assert head + list(resumed) == full


def test_samplers_take_the_same_arguments():
    data = dataset(n=10)
    assert len(list(TorchOrderRandomSampler(data, batch_size=4))) == 10
    assert len(list(LengthGroupedSampler(data, batch_size=4))) == 10


@pytest.mark.parametrize("value", [0, -2, 1.5, True])
def test_bad_group_size_gets_one_sentence(value):
    with pytest.raises(ConfigError, match=r"data.sampler.group_batches=.* must be a whole number >= 1"):
        LengthGroupedSampler(dataset(n=10), 4, value)


def test_the_sampler_preset_reaches_the_training_loader(make_cfg):
    from distill.blocks import build_datamodule

    cfg = make_cfg("data/sampler=length_grouped", "data.sampler.group_batches=2")
    dm = build_datamodule(cfg, str(cfg.teacher.name_or_path))
    dm.setup("fit")
    sampler = dm.train_dataloader().sampler
    assert isinstance(sampler, LengthGroupedSampler) and sampler.group_batches == 2 and sampler.batch_size == 8
    assert dm.sampler_key() is not None
    plain = make_cfg()
    assert build_datamodule(plain, str(plain.teacher.name_or_path)).sampler_key() is None


def test_ddp_shards_of_the_grouped_order_cover_the_data_and_keep_batches_of_similar_length():
    data = dataset(n=256)
    base = LengthGroupedSampler(data, batch_size=8, group_batches=4)
    ranks = [base.shard(2, r, seed=3) for r in range(2)]
    for s in ranks:
        s.set_epoch(1)
    per_rank = [list(s) for s in ranks]
    assert sorted(per_rank[0] + per_rank[1]) == list(range(256))
    length = lambda i: len(data[i]["input_ids"])  # noqa: E731
    for step in range(len(per_rank[0]) // 8):
        a, b = (p[step * 8:(step + 1) * 8] for p in per_rank)
        block = sorted((length(i) for i in a + b), reverse=True)
        # the two ranks' step batches are one length-sorted global batch dealt out alternately
        assert [length(i) for i in a] == block[0::2] and [length(i) for i in b] == block[1::2]
    # the same seed and epoch give the same shards; resuming skips what was yielded
    again = base.shard(2, 0, seed=3)
    again.set_epoch(1)
    it = iter(again)
    head = [next(it) for _ in range(10)]
    state = again.state_dict()
    resumed = base.shard(2, 0, seed=3)
    resumed.set_epoch(1)
    resumed.load_state_dict(state)
    assert head + list(resumed) == per_rank[0]
