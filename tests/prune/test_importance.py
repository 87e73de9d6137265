"""Importance estimators find the units of a toy model built so that the answer is known."""

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification

from distill.errors import ConfigError
from distill.prune import estimate_importance

LAYERS, HIDDEN, HEADS, FFN = 3, 24, 4, 32
HEAD_DIM = HIDDEN // HEADS


def batches(n=3, b=4, t=10, vocab=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        ids = torch.randint(5, vocab, (b, t), generator=g)
        mask = torch.ones(b, t, dtype=torch.long)
        mask[0, t // 2:] = 0  # one padded row: padding must not count
        out.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids),
                    "labels": torch.randint(0, 2, (b,), generator=g)})
    return out


@torch.no_grad()
def toy_model():
    """Known answers: layer 1 does nothing (its blocks write zeros), head 2 of layer 0 is dead and head 1 loud,
    FFN neurons 3 and 7 of every layer are dead, residual channel 5 is zeroed by every LayerNorm."""
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=60, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=FFN, max_position_embeddings=32, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0)).eval()
    base = model.bert
    lazy = base.encoder.layer[1]
    for dense in (lazy.attention.output.dense, lazy.output.dense):
        dense.weight.zero_()
        dense.bias.zero_()
    att = base.encoder.layer[0].attention.self
    dead, loud = slice(2 * HEAD_DIM, 3 * HEAD_DIM), slice(HEAD_DIM, 2 * HEAD_DIM)
    att.value.weight[dead] = 0
    att.value.bias[dead] = 0
    att.value.weight[loud] *= 10
    for layer in base.encoder.layer:
        layer.intermediate.dense.weight[[3, 7]] = 0
        layer.intermediate.dense.bias[[3, 7]] = -20.0  # GELU(-20) = 0
    for ln in [base.embeddings.LayerNorm] + [m for layer in base.encoder.layer
                                             for m in (layer.attention.output.LayerNorm, layer.output.LayerNorm)]:
        ln.weight[5] = 0
        ln.bias[5] = 0
    return model


@pytest.mark.parametrize("method", ["activation", "taylor"])
def test_importance_finds_the_known_units(method):
    scores = estimate_importance(toy_model(), batches(), method)
    assert scores.layers.shape == (LAYERS,) and scores.heads.shape == (LAYERS, HEADS)
    assert scores.qk_dims.shape == scores.v_dims.shape == (LAYERS, HEADS, HEAD_DIM)
    assert scores.neurons.shape == (LAYERS, FFN) and scores.hidden.shape == scores.pooler.shape == (HIDDEN,)
    assert scores.layers.argmin() == 1
    assert scores.heads[0].argmin() == 2
    assert scores.v_dims[0, 2].max() < 1e-6  # a dead head's value columns
    for layer in (0, 2):  # (every unit of the lazy layer 1 is unimportant to the loss)
        assert set(scores.neurons[layer].argsort()[:2].tolist()) == {3, 7}
    assert scores.hidden.argmin() == 5 and scores.hidden[5] < 1e-6


def test_activation_importance_finds_the_loud_head():
    assert estimate_importance(toy_model(), batches(), "activation").heads[0].argmax() == 1


def test_padding_does_not_count():
    model = toy_model()
    full = batches(n=1)
    padded = [{k: v.clone() for k, v in full[0].items()}]
    padded[0]["input_ids"][0, 5:] = 0  # only the ids under the mask change
    a = estimate_importance(model, full, "activation")
    b = estimate_importance(model, padded, "activation")
    torch.testing.assert_close(a.neurons, b.neurons)


def test_estimators_leave_the_model_unchanged():
    model = toy_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for method in ("activation", "taylor"):
        estimate_importance(model, batches(n=1), method)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters()) and not model.training
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_bad_estimator_and_no_batches():
    with pytest.raises(ConfigError, match="student.cut.importance='magic' is not one of activation, taylor"):
        estimate_importance(toy_model(), batches(), "magic")
    with pytest.raises(ConfigError, match="no calibration batches"):
        estimate_importance(toy_model(), [], "activation")
    unlabelled = [{k: v for k, v in b.items() if k != "labels"} for b in batches(n=1)]
    with pytest.raises(ConfigError, match="taylor needs labelled"):
        estimate_importance(toy_model(), unlabelled, "taylor")
