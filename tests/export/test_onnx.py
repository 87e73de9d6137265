"""ONNX export (dynamo exporter, dynamic axes), parity with PyTorch, onnxruntime int8."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

from distill.export.onnx import (  # noqa: E402
    OnnxClassifier,
    export_onnx,
    onnx_parity,
    quantize_onnx_int8,
    synthetic_batches,
)
from distill.report.timing import time_forward  # noqa: E402


def tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=2)
    return BertForSequenceClassification(config).eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model = tiny_bert()
    path = export_onnx(model, tmp_path_factory.mktemp("onnx") / "model.onnx")
    return model, path


def test_onnx_export_parity_with_dynamic_batch_and_sequence(exported):
    model, path = exported
    clf = OnnxClassifier(path)
    assert clf.input_names == ["input_ids", "attention_mask", "token_type_ids"]
    # shapes other than the export example (2 x 16), with right padding
    batches = synthetic_batches(120, n_batches=3, batch_size=5, seq_len=23) + synthetic_batches(120, 1, 1, 7)
    parity = onnx_parity(model, clf, batches)
    assert parity["examples"] == 16
    assert parity["max_abs_diff"] < 1e-4  # same fp32 graph; differences are kernel rounding (~1e-8 here)
    assert parity["agreement"] >= 0.995


def test_onnx_int8_runs_and_agrees(exported, tmp_path):
    model, path = exported
    int8 = quantize_onnx_int8(path, tmp_path / "model.int8.onnx", embeddings=True)
    clf = OnnxClassifier(int8, threads=1)
    batches = synthetic_batches(120, n_batches=2, batch_size=8, seq_len=16)
    parity = onnx_parity(model, clf, batches)
    assert parity["max_abs_diff"] < 0.05 * max(model(**batches[0]).logits.abs().max().item(), 1e-3)
    # batch without token_type_ids / with labels: the wrapper fills and drops keys; report.time_forward can time it
    times = time_forward(clf, {"input_ids": batches[0]["input_ids"], "attention_mask": batches[0]["attention_mask"],
                               "labels": torch.zeros(8)}, runs=2, warmup=1)
    assert len(times) == 2 and min(times) > 0
