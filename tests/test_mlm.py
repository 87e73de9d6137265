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
