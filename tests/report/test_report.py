"""distill.report.build_report: one pass per model, every row of one schema, parity, ratios, flat metrics."""

from __future__ import annotations

import copy

import pytest
import torch

from distill.data.tasks import get_task
from distill.report import (
    ModelEntry,
    ReportSettings,
    VariantContext,
    build_report,
    flat_metrics,
    format_table,
)
from distill.report.rows import __doc__ as schema_doc

FAST = ReportSettings(seq_len=16, latency_runs=3, throughput_batch=4, throughput_runs=2)


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


def schema_keys() -> set[str]:
    """The keys the rows module documents (the ``key`` cells of its table)."""
    return {line.split("``")[1] for line in schema_doc.splitlines() if line.startswith("``")}


@pytest.mark.usefixtures("single_thread")
def test_report_of_teacher_student_and_int8_variants(tmp_path):
    pytest.importorskip("torchao")
    pytest.importorskip("onnxruntime")
    from distill.export.variants import OnnxInt8
    from distill.quant import prepare_qat
    from distill.quant.variants import PTQInt8, QATInt8

    teacher, student = tiny_bert(4, 64, 0), tiny_bert(2, 32, 1)
    teacher.save_pretrained(tmp_path / "teacher")
    student.save_pretrained(tmp_path / "student")
    batches = dev_batches()
    ctx = VariantContext(trained=prepare_qat(copy.deepcopy(student)), student=student,
                         student_dir=tmp_path / "student", tokenizer=None, out_dir=tmp_path / "compression",
                         calibration=batches)
    entries = [ModelEntry("teacher", teacher, tmp_path / "teacher"), ModelEntry("student", student, tmp_path / "student"),
               QATInt8()(ctx), PTQInt8(embeddings=True)(ctx), OnnxInt8(embeddings=True)(ctx)]
    report = build_report(entries, get_task("sst2"), batches, FAST)
    rows = {r["model"]: r for r in report["models"]}
    assert list(rows) == ["teacher", "student", "student_int8_qat", "student_int8_ptq", "student_onnx_int8"]
    for row in rows.values():
        assert set(row) == schema_keys(), row["model"]
        for key in ("score", "retention", "parameters", "size_mb", "latency_ms", "latency_p90_ms", "throughput_eps",
                    "compression_size", "speedup_latency", "parity"):
            assert row[key] is not None, (row["model"], key)
        assert row["latency_p90_ms"] >= row["latency_ms"]
        assert row["compression_size"] == pytest.approx(rows["teacher"]["size_mb"] / row["size_mb"])
    assert rows["student"]["parity"] == {"reference": "student", "max_abs_logit_diff": 0.0, "agreement": 1.0}
    assert rows["teacher"]["retention"] == 1.0 and rows["teacher"]["compression_size"] == 1.0
    onnx = rows["student_onnx_int8"]
    assert (onnx["format"], onnx["precision"], onnx["runtime"]) == ("onnx", "int8", "onnxruntime")
    assert onnx["parameters"] == rows["student"]["parameters"] < rows["teacher"]["parameters"]
    assert onnx["notes"]["onnx_parity"]["fp32"]["agreement"] >= 0.95
    assert rows["student_int8_ptq"]["size_mb"] < rows["student"]["size_mb"] / 2  # embeddings int8 too
    assert rows["student_int8_ptq"]["parity"]["agreement"] >= 0.9  # int8 rounding flips few predictions
    assert 0 < rows["student_int8_ptq"]["parity"]["max_abs_logit_diff"] < 0.5
    assert report["settings"]["seq_len"] == 16 and report["task"] == "sst2"
    assert set(report["hardware"]) >= {"cpu", "cores", "torch_threads", "torch", "onnxruntime", "gpu"}
    flat = flat_metrics(report)
    assert flat["student_int8_qat_score"] == rows["student_int8_qat"]["score"] == flat["student_int8_qat_accuracy"]
    assert flat["student_retention"] == rows["student"]["retention"] and "teacher_retention" in flat
    assert all(name in format_table(report) for name in rows)


def test_known_metrics_skip_evaluation_and_the_reference_still_runs():
    def never(**_):
        raise AssertionError("a model with known metrics was run")

    student = tiny_bert(1, 16, 0)
    entries = [ModelEntry("teacher", never, metrics={"accuracy": 0.5}),
               ModelEntry("student", student, metrics={"accuracy": 0.25})]
    report = build_report(entries, get_task("sst2"), dev_batches(), ReportSettings(measure_speed=False))
    teacher, row = report["models"]
    assert (teacher["score"], teacher["parity"], teacher["latency_ms"]) == (0.5, None, None)
    assert row["score"] == 0.25 and row["retention"] == 0.5  # given metrics are kept, not recomputed
    assert row["parity"]["agreement"] == 1.0  # the reference ran once, for the other rows' parity


def test_rows_need_distinct_names():
    model = tiny_bert(1, 16, 0)
    with pytest.raises(ValueError, match="distinct names"):
        build_report([ModelEntry("student", model), ModelEntry("student", model)], get_task("sst2"), None,
                     ReportSettings(measure_speed=False))
