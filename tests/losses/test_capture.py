"""Projection capture: finding self-attention blocks, hooking values, unhooking."""

from __future__ import annotations

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    DistilBertConfig,
    DistilBertForSequenceClassification,
)

from distill.losses import capture_values
from distill.losses.capture import self_attention_modules


def linear_hooks(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules() if isinstance(m, torch.nn.Linear))


def test_capture_values_bert_and_distilbert():
    bert = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3,
                                                    num_attention_heads=2, intermediate_size=20)).eval()  # fmt: skip
    distil = DistilBertForSequenceClassification(DistilBertConfig(vocab_size=50, dim=16, n_layers=2, n_heads=4,
                                                                  hidden_dim=20)).eval()  # fmt: skip
    ids = torch.tensor([[1, 5, 6, 2]])
    for model, depth, heads in ((bert, 3, 2), (distil, 2, 4)):
        assert len(self_attention_modules(model)) == depth
        with capture_values(model, [depth]) as cap:
            assert linear_hooks(model) == 1
            model(input_ids=ids)
            value = cap.get(depth, "value")
            assert value.shape == (1, 4, 16) and cap.heads[depth] == heads
            assert cap.get(1, "value") is None  # only the requested layer is hooked
        assert linear_hooks(model) == 0
