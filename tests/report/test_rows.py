"""distill.report.rows: parameter split (embeddings vs the rest, shared tensors once), rows and ratios."""

from __future__ import annotations

import pytest
import torch
from conftest import make_tiny_bert

from distill.data.tasks import get_task
from distill.models.student import count_parameters
from distill.report.entry import ModelEntry
from distill.report.rows import add_ratios, make_row, parameter_split


def test_split_adds_up_on_a_tiny_bert(tmp_path):
    model, _ = make_tiny_bert(tmp_path, layers=2, hidden=32)
    split = parameter_split(model)
    emb = model.bert.embeddings
    tables = sum(t.weight.numel() for t in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings))
    assert split["parameters_embeddings"] == tables
    assert split["parameters_embeddings"] + split["parameters_other"] == split["parameters"] == count_parameters(model)
    assert split["parameters_other"] > 0


def test_tied_embedding_is_counted_once():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32, tie_word_embeddings=True))
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight
    split = parameter_split(model)
    naive = sum(p.numel() for _, p in model.named_parameters(remove_duplicate=False))
    # the decoder shares the word table (100 x 16) and its bias (100) with other modules: counted once
    assert split["parameters"] == naive - 100 * 16 - 100
    emb = model.bert.embeddings
    assert split["parameters_embeddings"] == (100 + 512 + 2) * 16 == sum(
        t.weight.numel() for t in (emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings))
    assert split["parameters_embeddings"] + split["parameters_other"] == split["parameters"]


def test_int8_embeddings_stay_embeddings(tmp_path):
    pytest.importorskip("torchao")
    from distill.quant import ptq_dynamic_int8

    model, _ = make_tiny_bert(tmp_path, layers=1, hidden=32)
    assert parameter_split(ptq_dynamic_int8(model, embeddings=True)) == parameter_split(model)


def test_row_has_the_whole_schema_and_ratios_divide_by_the_teacher(tmp_path):
    task = get_task("sst2")
    teacher, _ = make_tiny_bert(tmp_path / "t", layers=2, hidden=32)
    student, _ = make_tiny_bert(tmp_path / "s", layers=1, hidden=16)
    rows = [make_row(ModelEntry("teacher", teacher, tmp_path / "t"), task, {"accuracy": 0.8},
                     {"latency_ms": 4.0, "latency_p90_ms": 5.0, "throughput_eps": 100.0, "threads": 1}, None),
            make_row(ModelEntry("student", student, tmp_path / "s", notes={"k": 1}), task, {"accuracy": 0.6},
                     {"latency_ms": 1.0, "latency_p90_ms": 1.5, "throughput_eps": 400.0, "threads": 1}, None),
            make_row(ModelEntry("other", lambda **_: None, None, format="onnx", precision="int8"), task, {}, None,
                     None)]
    add_ratios(rows)
    t, s, o = rows
    assert set(t) == set(s) == set(o)
    assert s["retention"] == pytest.approx(0.6 / 0.8) and s["speedup_latency"] == 4.0
    assert s["compression_params"] == t["parameters"] / s["parameters"] > 1
    assert s["compression_size"] == pytest.approx(t["size_mb"] / s["size_mb"])
    assert (s["runtime"], s["format"], s["notes"], s["metric"], s["score"]) == ("torch", "pytorch", {"k": 1},
                                                                               "accuracy", 0.6)
    # a callable without params_of, size or metrics: Nones, never a crash
    assert (o["runtime"], o["parameters"], o["size_mb"], o["score"], o["retention"]) == (None,) * 5
    assert add_ratios([dict(s, retention=None)], reference="teacher")[0]["retention"] is None  # no teacher row


def test_runtime_load_time_and_memory_become_columns_only_when_measured(tmp_path):
    from distill.report.render import columns

    task = get_task("sst2")
    measured = make_row(ModelEntry("student_executorch_int8", lambda **_: None, None,
                                   notes={"load_ms": 111.0, "peak_memory_mb": 24.9}), task, {}, None, None)
    plain = make_row(ModelEntry("student", lambda **_: None, None), task, {}, None, None)
    assert (measured["load_ms"], measured["peak_memory_mb"]) == (111.0, 24.9)
    assert (plain["load_ms"], plain["peak_memory_mb"]) == (None, None)
    keys = lambda rows: [key for key, _, _ in columns({"models": rows})]  # noqa: E731
    assert keys([plain, measured])[-2:] == ["load_ms", "peak_memory_mb"]
    assert "load_ms" not in keys([plain])


def test_geometry_and_sparsity_are_measured_on_the_model(tmp_path):
    """A neuron-pruned student's row shows its narrower FFN and its real parameter count; a student with hand-made
    zeros shows their share (task head and pooler excluded)."""
    from distill.prune.neuron import slice_ffn

    task = get_task("sst2")
    model, _ = make_tiny_bert(tmp_path, layers=2, hidden=32, heads=2)  # FFN 64
    dense = make_row(ModelEntry("student", model, None), task, {}, None, None)
    assert (dense["geometry"], dense["sparsity"]) == ("L2 H32 A2 F64", 0.0)
    slice_ffn(model, [torch.arange(0, 64, 4), torch.arange(16)])  # keep 16 of 64 neurons in both layers
    with torch.no_grad():
        model.bert.encoder.layer[0].attention.self.query.weight[:8] = 0.0  # 8 x 32 = 256 zeros
        model.classifier.weight.zero_()
    pruned = make_row(ModelEntry("student", model, None), task, {}, None, None)
    # 2 layers x (4 x 32 x 32 + 2 x 32 x 16) = 10,240 pruned-layer weights; 48 neurons x (32 + 1 + 32) x 2 fewer
    assert pruned["geometry"] == "L2 H32 A2 F16" and model.config.intermediate_size == 16
    assert pruned["parameters"] == dense["parameters"] - 2 * 48 * (32 + 1 + 32)
    assert pruned["sparsity"] == 256 / 10240
    # an artifact that runs outside torch: measured on the module it was exported from; none: None
    onnx = make_row(ModelEntry("student_onnx", lambda **_: None, None, params_of=model), task, {}, None, None)
    assert (onnx["geometry"], onnx["sparsity"]) == ("L2 H32 A2 F16", 256 / 10240)
    bare = make_row(ModelEntry("coreml", None, None), task, {}, None, None)
    assert (bare["geometry"], bare["sparsity"]) == (None, None)
