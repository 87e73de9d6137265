"""Attention terms on tiny random BERTs: hooks reproduce HF attention, inline references, masking, gradients."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from distill.errors import ConfigError
from distill.losses import AttentionKL, AttentionScoreMSE, ValueRelationKL, capture_projections
from distill.losses.attention import _scores

IDS = torch.tensor([[2, 11, 12, 13, 14, 3], [2, 21, 22, 3, 0, 0]])  # (B=2, T=6)
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
BATCH = {"input_ids": IDS, "attention_mask": MASK, "labels": torch.tensor([0, 1])}


def bert(
    hidden: int, layers: int, heads: int, seed: int, dtype=torch.float32
) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        intermediate_size=37, attn_implementation="eager")  # fmt: skip
    return BertForSequenceClassification(config).to(dtype).eval()  # eval: no dropout in returned attentions


@pytest.fixture(scope="module")
def models():
    return {"student": bert(32, 2, 2, 0), "teacher": bert(48, 4, 2, 1), "teacher4": bert(48, 4, 4, 2)}


def run(model, batch=BATCH):
    return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                 output_hidden_states=True, output_attentions=True)  # fmt: skip


def forward(term, student, teacher, batch=BATCH):
    """Attach, run both models as the training step does, compute the term."""
    term.attach(student, teacher)
    try:
        with torch.no_grad():
            t_out = run(teacher, batch)
        return term(run(student, batch), t_out, batch, 1.0)
    finally:
        term.detach()


def hooked(model) -> bool:
    """Whether any Q/K/V projection still carries a forward hook (HF installs its own on other modules)."""
    return any(m._forward_hooks for m in model.modules() if isinstance(m, torch.nn.Linear))


def ref_scores(model, out, layer: int) -> torch.Tensor:
    """Pre-softmax scores of ``layer`` (1-based) from the layer's input and its Q/K weights: (B, h, T, T)."""
    attn = model.bert.encoder.layer[layer - 1].attention.self
    x = out.hidden_states[layer - 1]  # input of layer l
    heads, d = attn.num_attention_heads, attn.attention_head_size
    q = attn.query(x).view(*x.shape[:2], heads, d).transpose(1, 2)
    k = attn.key(x).view(*x.shape[:2], heads, d).transpose(1, 2)
    return q @ k.transpose(-1, -2) / math.sqrt(d)


def ref_row_kl(p_t, p_s, mask):
    """Mean over real query rows and heads of Σ_real keys p_t·ln(p_t/p_s)."""
    rows = []
    for b in range(p_t.shape[0]):
        n = int(mask[b].sum())
        pt, ps = p_t[b, :, :n, :n], p_s[b, :, :n, :n]
        rows.append((pt * (pt / ps).log()).sum(-1).flatten())
    return torch.cat(rows).mean()


def test_hooks_reproduce_eager_attention(models):
    model = models["teacher4"]
    with capture_projections(model, [1, 3], ("query", "key")) as cap:
        out = run(model)
        assert cap.heads == {1: 4, 3: 4}
        for layer in (1, 3):
            scores = _scores(
                cap.get(layer, "query"), cap.get(layer, "key"), 4, cap.scaling[layer]
            )  # (B, h, T, T)
            assert torch.allclose(scores, ref_scores(model, out, layer), atol=1e-5)
            probs = scores.masked_fill(~MASK.bool()[:, None, None, :], -1e9).softmax(-1)
            assert torch.allclose(probs, out.attentions[layer - 1], atol=1e-5)
    assert not hooked(model)  # unhooked on exit


def test_score_mse_matches_reference_and_masks(models):
    s_model, t_model = models["student"], models["teacher"]
    loss = forward(AttentionScoreMSE(), s_model, t_model)  # uniform 2 → 4: (1, 2), (2, 4)
    s_out, t_out = run(s_model), run(t_model)
    ref = 0.0
    for ls, lt in [(1, 2), (2, 4)]:
        a_s, a_t = ref_scores(s_model, s_out, ls), ref_scores(t_model, t_out, lt)
        errs = [
            ((a_s[b, :, :n, :n] - a_t[b, :, :n, :n]) ** 2).flatten()
            for b, n in enumerate(MASK.sum(1).tolist())
        ]
        ref += torch.cat(errs).mean().item()
    assert loss.item() == pytest.approx(ref, rel=1e-4)
    # other token ids at padded positions change nothing
    other = dict(BATCH, input_ids=IDS.masked_fill(MASK == 0, 77))
    assert forward(AttentionScoreMSE(), s_model, t_model, other).item() == pytest.approx(
        loss.item(), rel=1e-6
    )
    same = copy.deepcopy(s_model)
    assert forward(AttentionScoreMSE(), s_model, same).item() == pytest.approx(0.0, abs=1e-8)


def test_score_mse_log_probs_source_is_centred_scores(models):
    s_model, t_model = models["student"], models["teacher"]
    term = AttentionScoreMSE(source="log_probs")
    assert term.requires == frozenset({"attentions"})
    loss = term(run(s_model), run(t_model), BATCH, 1.0)  # no hooks needed
    s_out, t_out = run(s_model), run(t_model)
    ref = 0.0
    for ls, lt in [(1, 2), (2, 4)]:
        errs = []
        for b, n in enumerate(MASK.sum(1).tolist()):
            a_s = ref_scores(s_model, s_out, ls)[b, :, :n, :n]
            a_t = ref_scores(t_model, t_out, lt)[b, :, :n, :n]
            a_s, a_t = a_s - a_s.mean(-1, keepdim=True), a_t - a_t.mean(-1, keepdim=True)
            errs.append(((a_s - a_t) ** 2).flatten())
        ref += torch.cat(errs).mean().item()
    assert loss.item() == pytest.approx(ref, rel=1e-3)


def test_attention_kl_both_sources_match_reference(models):
    s_model, t_model = models["student"], models["teacher"]
    s_out, t_out = run(s_model), run(t_model)
    ref = ref_row_kl(t_out.attentions[-1], s_out.attentions[-1], MASK)  # last layers: (2, 4)
    assert AttentionKL.requires == frozenset({"qkv"})
    assert forward(AttentionKL(), s_model, t_model).item() == pytest.approx(ref.item(), rel=1e-4)
    assert AttentionKL(source="attentions")(s_out, t_out, BATCH, 1.0).item() == pytest.approx(
        ref.item(), rel=1e-4
    )
    assert forward(AttentionKL(), s_model, copy.deepcopy(s_model)).item() == pytest.approx(0.0, abs=1e-6)
    other = dict(BATCH, input_ids=IDS.masked_fill(MASK == 0, 77))
    assert forward(AttentionKL(), s_model, t_model, other).item() == pytest.approx(ref.item(), rel=1e-4)


def test_head_mismatch_mixes_heads(models):
    s_model, t_model = models["student"], models["teacher4"]  # 2 vs 4 heads
    s_out, t_out = run(s_model), run(t_model)
    p_s, p_t = s_out.attentions[-1].mean(1, keepdim=True), t_out.attentions[-1].mean(1, keepdim=True)
    ref = ref_row_kl(p_t, p_s, MASK)
    assert forward(AttentionKL(), s_model, t_model).item() == pytest.approx(ref.item(), rel=1e-4)
    assert forward(AttentionScoreMSE(), s_model, t_model).item() > 0


def test_value_relation_matches_reference(models):
    s_model, t_model = models["student"], models["teacher"]
    s_out, t_out = run(s_model), run(t_model)

    def relation(model, out, heads):
        attn = model.bert.encoder.layer[-1].attention.self
        v = attn.value(out.hidden_states[-2])  # input of the last layer
        v = v.view(*v.shape[:2], heads, -1).transpose(1, 2)  # (B, r, T, d)
        scores = v @ v.transpose(-1, -2) / math.sqrt(v.shape[-1])
        return scores.masked_fill(~MASK.bool()[:, None, None, :], -1e9).softmax(-1)

    ref = ref_row_kl(relation(t_model, t_out, 2), relation(s_model, s_out, 2), MASK)
    assert forward(ValueRelationKL(), s_model, t_model).item() == pytest.approx(ref.item(), rel=1e-4)
    ref4 = ref_row_kl(relation(t_model, t_out, 4), relation(s_model, s_out, 4), MASK)
    term = ValueRelationKL(relation_heads=4)
    assert forward(term, s_model, models["teacher4"]).item() > 0  # heads differ: relation heads make it work
    assert forward(term, s_model, t_model).item() == pytest.approx(ref4.item(), rel=1e-4)
    assert forward(ValueRelationKL(), s_model, copy.deepcopy(s_model)).item() == pytest.approx(0.0, abs=1e-6)


def test_errors(models):
    s_cfg, t_cfg, t4_cfg = (models[k].config for k in ("student", "teacher", "teacher4"))
    with pytest.raises(ConfigError, match=r"student 2, teacher 4.*set relation_heads"):
        ValueRelationKL(student_config=s_cfg, teacher_config=t4_cfg)
    with pytest.raises(ConfigError, match="relation_heads=5 does not divide the student width 32"):
        ValueRelationKL(relation_heads=5, student_config=s_cfg, teacher_config=t_cfg)
    with pytest.raises(
        ConfigError, match=r"AttentionKL\.layer_map\.pairs\[0\] names student layer 0, .* 1\.\.2"
    ):
        AttentionKL(
            layer_map={"strategy": "explicit", "pairs": [[0, 0]]}, student_config=s_cfg, teacher_config=t_cfg
        )
    with pytest.raises(ConfigError, match="source='probs' is not one of scores, log_probs"):
        AttentionScoreMSE(source="probs")
    with pytest.raises(RuntimeError, match=r"needs term\.attach\(student_model, teacher_model\)"):
        AttentionKL()(run(models["student"]), run(models["teacher"]), BATCH, 1.0)
    term = AttentionScoreMSE()
    term.attach(models["student"], models["teacher"])
    try:
        s_out = run(models["student"])  # the teacher never ran: e.g. precomputed teacher outputs
        with pytest.raises(RuntimeError, match="found no captured query for teacher layer 2"):
            term(s_out, s_out, BATCH, 1.0)
    finally:
        term.detach()
    with pytest.raises(ConfigError, match=r"layer 5 is outside the allowed range 1\.\.2"):
        capture_projections(models["student"], [5]).__enter__()


def test_gradcheck_float64_through_hooks():
    """Gradients of each term w.r.t. the student's input embeddings, padding included."""
    student, teacher = bert(4, 1, 2, 3, torch.float64), bert(8, 2, 2, 4, torch.float64)
    ids, mask = IDS[:, :3].clone(), MASK[:, :3].clone()
    mask[1, 2] = 0  # one padded position
    batch = {"input_ids": ids, "attention_mask": mask}
    with torch.no_grad():
        t_embeds = teacher.bert.embeddings.word_embeddings(ids)
    s_embeds = student.bert.embeddings.word_embeddings(ids).detach().requires_grad_()
    for term in (AttentionScoreMSE(), AttentionKL(), ValueRelationKL()):
        term.attach(student, teacher)

        def fn(embeds, term=term):
            with torch.no_grad():
                t_out = teacher(inputs_embeds=t_embeds, attention_mask=mask)
            return term(student(inputs_embeds=embeds, attention_mask=mask), t_out, batch, 1.0)

        assert torch.autograd.gradcheck(fn, (s_embeds,), eps=1e-6, atol=1e-5, fast_mode=True)
        term.detach()


def test_deepcopy_drops_hooks(models):
    term = AttentionKL()
    term.attach(models["student"], models["teacher"])
    clone = copy.deepcopy(term)
    assert clone.depths() is None and term.depths() == (2, 4)
    term.detach()
    assert not hooked(models["student"])


def test_gradcheck_float64_from_attentions():
    """Full gradcheck of the HF-attentions sources on softmax probabilities with a padded key and query."""
    g = torch.Generator().manual_seed(5)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    batch = {"input_ids": mask.clone(), "attention_mask": mask}
    s_scores = torch.randn(2, 2, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    t_probs = torch.randn(2, 2, 3, 3, dtype=torch.float64, generator=g).softmax(-1)

    def probs(scores):  # eager attention: padded keys get probability 0
        return scores.masked_fill(~mask.bool()[:, None, None, :], float("-inf")).softmax(-1)

    for term in (AttentionKL(source="attentions"), AttentionScoreMSE(source="log_probs")):

        def fn(scores, term=term):
            s = SimpleNamespace(logits=scores, attentions=(probs(scores),))
            return term(s, SimpleNamespace(attentions=(probs(t_probs),)), batch, 1.0)

        assert torch.autograd.gradcheck(fn, (s_scores,))
