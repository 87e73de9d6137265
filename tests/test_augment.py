"""TinyBERT-style augmentation: embedding neighbours, replacement rules, determinism, the cached training set."""

import math
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer, BertTokenizerFast

from distill.blocks import build_datamodule
from distill.data.augment import (
    augment_ids,
    augment_train_set,
    nearest_neighbours,
    neighbour_table,
    piece_groups,
    replaceable_tokens,
)
from distill.data.tasks import get_task
from distill.models.teacher import load_classifier

pytestmark = pytest.mark.usefixtures("single_thread")


def _circle(degrees):
    return torch.tensor([[math.cos(math.radians(d)), math.sin(math.radians(d))] for d in degrees])  # (V, 2)


def test_neighbours_are_the_closest_by_cosine():
    emb = _circle([0, 10, 20, 50, 180, 25]) * torch.tensor([[1.0], [3.0], [0.5], [1.0], [2.0], [1.0]])  # norms differ
    allowed = torch.tensor([False, True, True, True, True, True])  # row 0 plays a special token
    top = nearest_neighbours(emb, torch.tensor([1, 4]), 3, allowed)
    assert top.tolist() == [[2, 5, 3], [3, 5, 2]]  # never itself, never the disallowed row 0 (10° from row 1)
    groups = torch.tensor([0, 0, 0, 1, 1, 0])
    top = nearest_neighbours(emb, torch.tensor([1, 3]), 3, allowed, groups)
    assert top.tolist() == [[2, 5, 1], [4, 3, 3]]  # only same-group rows; too few candidates: itself fills


def test_continuation_pieces_form_their_own_group():
    tok = BertTokenizerFast(vocab={t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "play",
                                                                "##ing", "##s", "[unused0]", "run"])})
    assert piece_groups(tok, 10).tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 0, 0]
    assert replaceable_tokens(tok, 10).tolist() == [False] * 5 + [True, True, True, False, True]


def test_special_tokens_are_never_replaced_and_copies_are_seeded(tiny_teacher):
    tok = AutoTokenizer.from_pretrained(str(tiny_teacher))
    emb = torch.randn(len(tok), 8, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor(tok("the good movie was fun", "a bad plot")["input_ids"] + [tok.pad_token_id])
    table, replaceable = neighbour_table(emb, tok, ids.unique(), top_k=3)
    special = torch.isin(ids, torch.tensor(tok.all_special_ids))
    out = augment_ids(ids, table, replaceable, 1.0, torch.Generator().manual_seed(1))
    assert torch.equal(out[special], ids[special]) and (out[~special] != ids[~special]).all()
    assert not torch.isin(out[~special], torch.tensor(tok.all_special_ids)).any()
    for pos in (~special).nonzero().flatten().tolist():  # each replacement is one of the piece's neighbours
        assert out[pos] in table[ids[pos]]
    again = augment_ids(ids, table, replaceable, 0.5, torch.Generator().manual_seed(7))
    assert torch.equal(again, augment_ids(ids, table, replaceable, 0.5, torch.Generator().manual_seed(7)))
    runs = {tuple(augment_ids(ids, table, replaceable, 0.5, torch.Generator().manual_seed(s)).tolist()) for s in range(5)}
    assert len(runs) > 1


def test_augmented_training_set_is_labelled_by_the_teacher_and_cached(make_cfg, tiny_teacher, caplog):
    cfg = make_cfg("augment.enabled=true", "augment.copies=2", "augment.replace_prob=0.5")
    teacher = load_classifier(str(tiny_teacher), get_task("sst2"))
    dm = build_datamodule(cfg, str(tiny_teacher))
    dm.setup("fit")
    original = dm.datasets["train"].with_format(None)[:]
    augment_train_set(cfg, dm, teacher, str(tiny_teacher))
    train = dm.datasets["train"]
    n = len(original["input_ids"])
    assert len(train) == 3 * n
    rows = train.with_format(None)[:]
    assert rows["input_ids"][:n] == original["input_ids"] and rows["labels"][:n] == original["labels"]
    aug = rows["input_ids"][n:]
    assert [len(a) for a in aug] == [len(o) for o in original["input_ids"] for _ in range(2)]
    assert sum(a != o for a, o in zip(aug, [o for o in original["input_ids"] for _ in range(2)])) > n
    with torch.no_grad():
        batch = dm._collate([train[i] for i in range(n, n + 8)])
        expected = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           token_type_ids=batch["token_type_ids"]).logits.argmax(-1)
    assert batch["labels"].tolist() == expected.tolist()  # hard labels of augmented rows: the teacher's argmax
    dm2 = build_datamodule(cfg, str(tiny_teacher))
    with caplog.at_level("INFO", logger="distill"):
        augment_train_set(cfg, dm2, teacher, str(tiny_teacher))
    assert "Reusing the augmented training set" in caplog.text
    assert dm2.datasets["train"].with_format(None)[:] == rows
    other = make_cfg("augment.enabled=true", "augment.copies=2", "augment.seed=5")
    augment_train_set(other, build_datamodule(other, str(tiny_teacher)), teacher, str(tiny_teacher))
    assert len(list((Path(cfg.paths.cache_dir) / "augmented").iterdir())) == 2
