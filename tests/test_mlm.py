"""Masked-LM distillation: BERT masking, the masked soft KL and MLM losses against plain references, models."""

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer

from distill.data.masking import IGNORE, mask_batch, mask_tokens
from distill.errors import ConfigError
from distill.kernels import softmax_kl_reference
from distill.losses.mlm import MaskedLMLoss, MaskedSoftKL
from distill.models.mlm import classifier_view, load_mlm_teacher, masked_lm_student
from distill.models.student import distil_student


def test_mask_tokens_follows_bert_80_10_10():
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (64, 128))
    maskable = torch.rand(64, 128, generator=gen) < 0.8
    inputs, labels, chosen = mask_tokens(ids, maskable, mask_token_id=4, vocab_size=1000, mask_prob=0.15, generator=gen)
    assert not chosen[~maskable].any()  # only maskable positions
    assert chosen.float().sum() / maskable.sum() == pytest.approx(0.15, abs=0.01)
    assert torch.equal(labels[chosen], ids[chosen]) and (labels[~chosen] == IGNORE).all()
    assert torch.equal(inputs[~chosen], ids[~chosen])
    n = chosen.sum().item()
    as_mask = (inputs[chosen] == 4).sum().item() / n
    kept = (inputs[chosen] == ids[chosen]).sum().item() / n
    assert as_mask == pytest.approx(0.8, abs=0.03) and kept == pytest.approx(0.1, abs=0.03)  # ~0.1 random
    again = mask_tokens(ids, maskable, mask_token_id=4, vocab_size=1000, generator=torch.Generator().manual_seed(0))
    first = mask_tokens(ids, maskable, mask_token_id=4, vocab_size=1000, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(again, first))


def test_mask_batch_never_masks_specials_or_padding(tiny_teacher):
    tok = AutoTokenizer.from_pretrained(str(tiny_teacher))
    batch = dict(tok(["good movie", "the film was very very boring"], padding=True, return_tensors="pt"))
    out = mask_batch(batch, tok, mask_prob=0.99, generator=torch.Generator().manual_seed(0))
    special = torch.isin(batch["input_ids"], torch.tensor(tok.all_special_ids))
    assert not out["mlm_mask"][special].any() and not out["mlm_mask"][batch["attention_mask"] == 0].any()
    assert out["mlm_mask"][~special & (batch["attention_mask"] == 1)].float().mean() > 0.8


def _outputs(seed=0, b=3, t=5, v=11):
    gen = torch.Generator().manual_seed(seed)
    s = torch.randn(b, t, v, generator=gen, requires_grad=True)
    teacher = torch.randn(b, t, v, generator=gen)
    mask = torch.rand(b, t, generator=gen) < 0.4
    mask[0, 0] = True
    labels = torch.where(mask, torch.randint(v, (b, t), generator=gen), torch.full((b, t), IGNORE))
    attn = torch.ones(b, t, dtype=torch.long)
    attn[1, 3:] = 0
    batch = {"input_ids": torch.zeros(b, t, dtype=torch.long), "attention_mask": attn, "mlm_mask": mask,
             "mlm_labels": labels}
    return SimpleNamespace(logits=s), SimpleNamespace(logits=teacher), batch


@pytest.mark.parametrize("positions", ["masked", "tokens"])
def test_masked_soft_kl_matches_plain_reference(positions):
    student, teacher, batch = _outputs()
    rows = batch["mlm_mask"] if positions == "masked" else batch["attention_mask"].bool()
    loss = MaskedSoftKL(positions=positions, backend="torch")(student, teacher, batch, 2.0)
    # plain: KL over the vocabulary per selected row, mean over those rows, times T²
    log_p = F.log_softmax(teacher.logits[rows].double() / 2.0, -1)
    log_q = F.log_softmax(student.logits[rows].double() / 2.0, -1)
    plain = (log_p.exp() * (log_p - log_q)).sum(-1).mean() * 4.0
    assert loss.item() == pytest.approx(plain.item(), rel=1e-5)
    (grad,) = torch.autograd.grad(loss, student.logits)
    ref = softmax_kl_reference(student.logits, teacher.logits, 2.0, mask=rows)
    (ref_grad,) = torch.autograd.grad(ref, student.logits)
    assert torch.allclose(grad, ref_grad, atol=1e-6)
    assert grad[~rows].abs().max() == 0


def test_mlm_cross_entropy_matches_plain_reference():
    student, teacher, batch = _outputs(seed=1)
    loss = MaskedLMLoss()(student, teacher, batch, 1.0)
    plain = F.cross_entropy(student.logits.flatten(0, 1), batch["mlm_labels"].flatten(), ignore_index=IGNORE)
    assert loss.item() == pytest.approx(plain.item(), rel=1e-6)


def test_batches_without_masked_positions_give_zero():
    student, teacher, batch = _outputs()
    batch["mlm_mask"] = torch.zeros_like(batch["mlm_mask"])
    batch["mlm_labels"] = torch.full_like(batch["mlm_labels"], IGNORE)
    assert MaskedSoftKL(backend="torch")(student, teacher, batch, 1.0).item() == 0.0
    zero = MaskedLMLoss()(student, teacher, batch, 1.0)
    assert zero.item() == 0.0 and zero.requires_grad


def test_losses_refuse_sequence_classifier_logits():
    student, teacher, batch = _outputs()
    flat = SimpleNamespace(logits=torch.zeros(3, 2))
    with pytest.raises(ConfigError, match="needs masked-LM models"):
        MaskedSoftKL()(flat, teacher, batch, 1.0)


def test_teacher_without_mlm_head_is_refused(tiny_teacher):
    with pytest.raises(ConfigError) as err:
        load_mlm_teacher(str(tiny_teacher))
    assert str(err.value) == (f"teacher.name_or_path={tiny_teacher} has no masked-LM head; "
                              "mlm_distill needs a BertForMaskedLM checkpoint.")


def test_masked_lm_student_takes_the_teachers_head_and_layers(tiny_mlm_teacher):
    teacher = load_mlm_teacher(str(tiny_mlm_teacher))
    assert not teacher.training
    student = masked_lm_student(distil_student(classifier_view(teacher)), teacher)
    assert type(student).__name__ == "BertForMaskedLM" and student.config.num_hidden_layers == 2
    t, s = teacher.state_dict(), student.state_dict()
    assert torch.equal(s["cls.predictions.transform.dense.weight"], t["cls.predictions.transform.dense.weight"])
    assert torch.equal(s["bert.encoder.layer.1.output.dense.weight"], t["bert.encoder.layer.2.output.dense.weight"])
    assert torch.equal(s["bert.embeddings.word_embeddings.weight"], t["bert.embeddings.word_embeddings.weight"])
    assert student.get_output_embeddings().weight is student.get_input_embeddings().weight  # tied


# ---- static masking and the teacher's logits at masked positions from the cache (#16) ---------------------------
TEXTS = ["the movie was good", "a dog and a cat", "very very boring film", "good", "the film was a movie"] * 4


def _static(tiny_teacher, seed=0, **kw):
    from distill.data.text import TextDataModule

    tok = AutoTokenizer.from_pretrained(str(tiny_teacher))
    return TextDataModule(tok, texts=TEXTS, max_length=16, batch_size=4, mask_prob=0.3, seed=seed, static_masking=True, **kw)


def test_static_masks_are_drawn_once_per_text_from_the_seed(tiny_teacher):
    dm = _static(tiny_teacher)
    plain = dm.tokenizer(TEXTS, truncation=True, max_length=16)["input_ids"]
    rows = dm.train_set()
    assert [r["input_ids"] for r in rows] != plain and [r["input_ids"] for r in _static(tiny_teacher).train_set()] == \
        [r["input_ids"] for r in rows]  # masked, and the same seed masks the same way
    assert [r["mlm_labels"] for r in _static(tiny_teacher, seed=1).train_set()] != [r["mlm_labels"] for r in rows]
    chosen = sum(sum(v != IGNORE for v in r["mlm_labels"]) for r in rows)
    maskable = sum(len(p) - 2 for p in plain)  # [CLS] and [SEP] are never masked
    assert 0.15 < chosen / maskable < 0.45
    for row, ids in zip(rows, plain):
        assert len(row["mlm_labels"]) == len(ids) and row["mlm_labels"][0] == row["mlm_labels"][-1] == IGNORE
        assert all(lab == orig for lab, orig in zip(row["mlm_labels"], ids) if lab != IGNORE)
        assert all(new == orig for new, orig, lab in zip(row["input_ids"], ids, row["mlm_labels"]) if lab == IGNORE)
    epochs = [[dm.collate(rows[i:i + 4]) for i in range(0, len(rows), 4)] for _ in range(2)]
    for a, b in zip(*epochs):  # every epoch sees the same masks
        assert all(torch.equal(a[k], b[k]) for k in ("input_ids", "mlm_labels", "mlm_mask"))
        assert torch.equal(a["mlm_mask"], a["mlm_labels"] != IGNORE) and a["mlm_labels"][a["attention_mask"] == 0].eq(IGNORE).all()
    assert dm.teacher_output_refusal() is None
    dynamic = _static(tiny_teacher, seed=0)
    dynamic.static_masking = False
    assert "masked afresh every epoch" in dynamic.teacher_output_refusal()


@pytest.mark.parametrize("kw, message", [
    ({"static_masking": "yes"}, "data.static_masking='yes' must be true or false"),
    ({"static_masking": True, "mask_prob": None}, "data.static_masking=true needs data.mask_prob"),
])
def test_bad_static_masking_gets_one_sentence(tiny_teacher, kw, message):
    from distill.data.text import TextDataModule

    tok = AutoTokenizer.from_pretrained(str(tiny_teacher))
    with pytest.raises(ConfigError, match=message):
        TextDataModule(tok, texts=TEXTS, **{"mask_prob": 0.15, **kw})


@pytest.mark.parametrize("positions", ["masked", "tokens"])
def test_soft_kl_from_the_teachers_rows_at_the_positions_equals_the_dense_loss(positions):
    student, teacher, batch = _outputs()
    term = MaskedSoftKL(positions=positions, backend="torch")
    rows = term.select(batch, (3, 5), torch.device("cpu"))
    dense = term(student, teacher, batch, 2.0)
    picked = term(student, SimpleNamespace(logits=None, position_logits=teacher.logits[rows]), batch, 2.0)
    torch.testing.assert_close(picked, dense, rtol=1e-6, atol=1e-7)
    g_dense, g_picked = (torch.autograd.grad(x, student.logits)[0] for x in (dense, picked))
    torch.testing.assert_close(g_picked, g_dense, rtol=1e-6, atol=1e-7)
    empty = {**batch, "mlm_mask": torch.zeros_like(batch["mlm_mask"])}
    if positions == "masked":  # no masked position: 0, not NaN
        assert term(student, SimpleNamespace(position_logits=torch.zeros(0, 11)), empty, 2.0).item() == 0.0


@pytest.mark.parametrize("tail, expected", [("bucket", 0.425533), ("renormalize", 0.804091)])
def test_top_k_soft_kl_at_a_masked_position_matches_the_hand_computed_value(tail, expected):
    """Teacher [2, 1, 0, -1], student uniform, k = 2, T = 1. By hand, Z = e² + e + 1 + e⁻¹ = 11.4752:
    bucket: p = (0.64391, 0.23688, 0.05960, 0.05960) (the tail's 0.11920 split in two), KL = Σ p·ln(4p) = 0.42553;
    renormalize: p = (e, 1)/(e + 1) = (0.73106, 0.26894, 0, 0), KL = 0.80409 (dense: 0.43876)."""
    from distill.teacher_cache_topk import dense_logits

    t = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    values, indices = t.topk(2, dim=-1)
    rows = dense_logits(values, indices, torch.logsumexp(t, -1), 4, tail)
    student = SimpleNamespace(logits=torch.zeros(1, 3, 4))
    batch = {"mlm_mask": torch.tensor([[False, True, False]])}
    loss = MaskedSoftKL(backend="torch")(student, SimpleNamespace(position_logits=rows), batch, 1.0)
    assert loss.item() == pytest.approx(expected, abs=2e-6) and torch.isfinite(loss)
