"""Compression report: rows, ratios to the teacher, JSON/markdown/PNG files; evaluate_classifier."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("torchao")
pytest.importorskip("onnxruntime")

from distill.compression import build_compression_report, evaluate_classifier  # noqa: E402
from distill.data.tasks import get_task  # noqa: E402


def tiny_bert(layers: int, hidden: int, seed: int):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=120, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=2 * hidden, num_labels=2)
    return BertForSequenceClassification(config).eval()


def dev_batches(n_batches: int = 3, size: int = 8, seq: int = 12):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(0, 120, (size, seq), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
                    "labels": torch.randint(0, 2, (size,), generator=g)})
    return out


def test_evaluate_classifier_matches_manual_accuracy():
    model, batches = tiny_bert(1, 16, 0), dev_batches()
    metrics = evaluate_classifier(model, batches, get_task("mrpc"))
    assert set(metrics) == {"f1", "accuracy"}
    with torch.no_grad():
        correct = sum(int((model(input_ids=b["input_ids"]).logits.argmax(-1) == b["labels"]).sum()) for b in batches)
    assert metrics["accuracy"] == pytest.approx(correct / 24)


def test_compression_report_schema_ratios_and_files(tmp_path):
    from distill.quant import convert_qat, prepare_qat

    teacher, student = tiny_bert(4, 64, 0), tiny_bert(2, 32, 1)
    qat = convert_qat(prepare_qat(tiny_bert(2, 32, 1)))
    task = get_task("sst2")
    report = build_compression_report(
        tmp_path, teacher, student, task, dev_batches(), qat_int8=qat, embeddings=True,
        seq_len=16, latency_runs=3, throughput_batch=4, throughput_runs=2,
    )
    rows = {r["model"]: r for r in report["models"]}
    assert list(rows) == ["teacher", "student_fp32", "student_int8_qat", "student_int8_ptq", "student_onnx_int8"]
    for row in rows.values():
        for key in ("metric", "score", "retention", "parameters", "size_mb", "compression_size", "compression_params",
                    "latency_ms", "throughput_eps", "speedup_latency", "threads", "seq_len", "path"):
            assert row.get(key) is not None, (row["model"], key)
        assert row["metric"] == "accuracy" and 0.0 <= row["score"] <= 1.0
        assert row["compression_size"] == pytest.approx(rows["teacher"]["size_mb"] / row["size_mb"])
        assert row["speedup_latency"] == pytest.approx(rows["teacher"]["latency_ms"] / row["latency_ms"])
    assert rows["teacher"]["compression_size"] == 1.0 and rows["teacher"]["retention"] == 1.0
    assert rows["student_fp32"]["parameters"] == rows["student_onnx_int8"]["parameters"] < rows["teacher"]["parameters"]
    assert rows["student_int8_ptq"]["size_mb"] < rows["student_fp32"]["size_mb"] / 2  # embeddings int8 too (tiny: overhead)
    assert rows["student_onnx_int8"]["runtime"] == "onnxruntime"
    assert report["onnx_parity"]["fp32"]["agreement"] >= 0.995
    assert report["settings"]["seq_len"] == 16 and report["settings"]["torch_threads"] >= 1
    saved = json.loads((tmp_path / "compression.json").read_text())
    assert [r["model"] for r in saved["models"]] == list(rows)
    md = (tmp_path / "compression.md").read_text()
    assert "| teacher |" in md and "threads" in md and "student_onnx_int8" in md
    png = (tmp_path / "compression.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
