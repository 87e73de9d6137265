"""ExecuTorch specifics: the XNNPACK-friendly graph (what stays outside the delegate), the bundled program a
device checks itself with, and the load time / peak memory of a runtime measured in a fresh process."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_bert
from torch import nn

from distill.errors import ConfigError
from distill.export.edge import manifest_path
from distill.export.executorch_graph import XnnpackLayerNorm, xnnpack_friendly
from distill.export.onnx import logits_of, synthetic_batches

NAMES = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    model, _ = make_tiny_bert(tmp_path_factory.mktemp("et") / "student")
    return model.eval()


def test_xnnpack_layer_norm_matches_layer_norm():
    norm = nn.LayerNorm(48, eps=1e-12)
    with torch.no_grad():
        norm.weight.normal_(), norm.bias.normal_()
    x = torch.randn(3, 7, 48) * 5 + 2
    assert torch.allclose(XnnpackLayerNorm(norm)(x), norm(x), atol=1e-5)


def test_xnnpack_friendly_keeps_logits(student):
    friendly = xnnpack_friendly(student)
    assert not any(type(m) is nn.LayerNorm for m in friendly.modules())
    assert any(type(m) is nn.LayerNorm for m in student.modules())  # the original is untouched
    for batch in synthetic_batches(student.config.vocab_size, 2, 3, 11):
        assert torch.allclose(logits_of(friendly, batch), logits_of(student, batch), atol=1e-5)


@pytest.mark.slow
def test_executorch_fp32_bundled_program_checks_itself(student, tmp_path):
    pytest.importorskip("executorch")
    from distill.export.edge import LogitsModule
    from distill.export.executorch import (
        ExecuTorchClassifier,
        export_executorch,
        verify_bundled,
        write_bundled,
    )

    calib = synthetic_batches(student.config.vocab_size, 1, 6, 20, seed=3)
    path = export_executorch(student, tmp_path / "model-fp32.pte", "fp32", seq_len=32, calibration=calib)
    meta = json.loads(manifest_path(path).read_text())
    bundled = meta["bundled_program"]
    lengths = calib[0]["attention_mask"].sum(1).clamp(min=2)[:4].tolist()
    assert path.with_suffix(".bpte").is_file() and bundled["file"] == "model-fp32.bpte"
    assert bundled["cases"] == 4 and bundled["sequence_lengths"] == lengths  # unpadded dev examples
    assert bundled["check_here"] == {
        "passed": True,
        "failed_cases": [],
        "max_abs_diff": pytest.approx(0, abs=1e-4),
    }
    assert bundled["expected_from"] == "the fp32 PyTorch student"
    # the expected logits are the student's own
    first = {k: v[:1, : lengths[0]] for k, v in calib[0].items()}
    assert torch.allclose(
        torch.tensor(bundled["expected_logits"][0]), logits_of(student, first)[0], atol=1e-6
    )
    # every op that matters runs in XNNPACK: layer norm, attention and linear layers are delegated
    outside = meta["delegation"]["outside_xnnpack"]
    for op in ("aten_native_layer_norm_default", "aten_linear_default", "aten_bmm_default", "aten_any_dim"):
        assert op not in outside
    assert outside.get("aten_where_self", 0) <= 1  # the attention mask is built once, not once per layer
    assert ExecuTorchClassifier(path, NAMES, threads=1).max_batch == 1

    # falsifiable: a bundle whose expectations are off by 0.5 fails ExecuTorch's own check, case by case
    class Shifted(nn.Module):
        def forward(self, *inputs):
            return LogitsModule(student, NAMES)(*inputs) + 0.5

    cases = [
        tuple(t[i : i + 1] for t in (b["input_ids"], b["attention_mask"], b["token_type_ids"]))
        for b in calib
        for i in range(2)
    ]
    wrong = write_bundled(path, tmp_path / "wrong.bpte", cases, Shifted(), (1e-5, 1e-4))
    check = verify_bundled(tmp_path / "wrong.bpte", 2, 1e-5, 1e-4, wrong["expected_logits"])
    assert not check["passed"] and check["failed_cases"] == [0, 1]
    assert check["max_abs_diff"] == pytest.approx(0.5, abs=1e-4)


@pytest.mark.slow
def test_peak_memory_and_load_time_grow_with_the_artifact(student, tmp_path):
    pytest.importorskip("executorch")
    from distill.export.executorch import export_executorch
    from distill.export.memory import measure

    big, _ = make_tiny_bert(tmp_path / "big", layers=2, hidden=256, heads=4)
    big.config.intermediate_size = 4096  # rebuild with wide feed-forward layers: ~19 MB of linear weights
    from transformers import BertForSequenceClassification

    big = BertForSequenceClassification(big.config).eval()
    small_pte = export_executorch(student, tmp_path / "small.pte", seq_len=32)
    big_pte = export_executorch(big, tmp_path / "big.pte", seq_len=32)
    small = measure("executorch", small_pte, NAMES, seq_len=32, threads=1)
    large = measure("executorch", big_pte, NAMES, seq_len=32, threads=1)
    for got in (small, large):
        assert got["load_ms"] > 0 and 0 < got["peak_memory_mb"] < 1000 and got["rss_before_load_mb"] > 50
        assert got["threads"] == 1 and got["runs"] == 3
    weights_mb = big_pte.stat().st_size / 2**20
    assert large["peak_memory_mb"] - small["peak_memory_mb"] > 0.5 * weights_mb  # the weights are resident


def test_memory_rejects_an_unknown_runtime(tmp_path):
    from distill.export.memory import measure

    with pytest.raises(ConfigError, match="allowed: executorch, ai_edge_litert, onnxruntime"):
        measure("tflite", tmp_path / "m.tflite", NAMES)
