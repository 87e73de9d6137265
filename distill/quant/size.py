"""Analytic size on disk of a BERT classifier in fp32 and in torchao int8 (what quantizing would save)."""

from __future__ import annotations

from typing import Any


def int8_size_estimate(config: Any, embeddings: bool = False) -> dict[str, float]:
    """Analytic size on disk (MB) of a BERT classifier in fp32 and torchao int8, and their ratio.

    int8 layers store 1 byte per weight plus one fp32 scale per output row; biases, LayerNorms (and the
    embeddings unless ``embeddings``) stay fp32. Serialization overhead (a few KB) is ignored.
    """
    h, ffn, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    labels = getattr(config, "num_labels", 2)
    emb_rows = config.vocab_size + config.max_position_embeddings + getattr(config, "type_vocab_size", 0)
    linear = [(h, h)] * 4 * layers + [(ffn, h), (h, ffn)] * layers + [(h, h), (labels, h)]  # (out, in)
    lin_w = sum(o * i for o, i in linear)
    lin_rows = sum(o for o, _ in linear)
    lin_b = lin_rows
    emb_w = emb_rows * h
    norms = 2 * h * (1 + 2 * layers)
    fp32 = 4 * (lin_w + lin_b + emb_w + norms)
    int8 = lin_w + 4 * lin_rows + 4 * lin_b + 4 * norms + (emb_w + 4 * emb_rows if embeddings else 4 * emb_w)
    return {"fp32_mb": fp32 / 1e6, "int8_mb": int8 / 1e6, "ratio": fp32 / int8}
