"""Edge formats: ExecuTorch / LiteRT / Core ML export, each loaded in its runtime (Core ML: inspected), parity
with PyTorch; the missing-extra, bad-format and failed-parity messages."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_bert

from distill.errors import ConfigError
from distill.export.edge import check_parity, manifest_path, require
from distill.export.onnx import logits_of, synthetic_batches

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("input_ids", "attention_mask", "token_type_ids")


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    path = tmp_path_factory.mktemp("edge") / "run" / "student"
    model, _ = make_tiny_bert(path)
    return model.eval(), path


def max_diff(model, clf, batches) -> float:
    return max((logits_of(model, b) - clf(**b)).abs().max().item() for b in batches)


@pytest.mark.parametrize(
    ("what", "extra"), [("executorch", "executorch"), ("litert", "litert"), ("coreml", "coreml")]
)
def test_missing_extra_names_the_pip_command(monkeypatch, what, extra):
    module = {"executorch": "executorch", "litert": "litert_torch", "coreml": "coremltools"}[what]
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    with pytest.raises(ConfigError) as err:
        require(what)
    assert str(err.value) == (
        f"the {extra} export needs the optional extra '{extra}' ({module} is not installed): "
        f'pip install "torch==2.13.0" -e ".[{extra}]"'
    )


def test_missing_extra_stops_the_exporter(monkeypatch, student, tmp_path):
    from distill.export.executorch import export_executorch

    monkeypatch.setitem(sys.modules, "executorch", None)
    with pytest.raises(ConfigError, match=r"pip install \"torch==2.13.0\" -e \"\.\[executorch\]\""):
        export_executorch(student[0], tmp_path / "m.pte")


def test_bad_format_lists_the_edge_formats():
    from distill.export import parse_formats

    with pytest.raises(ConfigError, match="allowed formats: hf, int8, onnx, executorch, litert, coreml"):
        parse_formats("executorch,tflite")


def test_check_parity_verdicts():
    assert check_parity({"max_abs_logit_diff": 5e-5, "agreement": 1.0}, "fp32")["status"] == "passed"
    assert check_parity({"max_abs_logit_diff": 2e-4, "agreement": 1.0}, "fp32")["status"] == "failed"
    assert check_parity({"max_abs_logit_diff": 0.3, "agreement": 0.991}, "int8")["status"] == "passed"
    assert check_parity({"max_abs_logit_diff": 0.01, "agreement": 0.98}, "int8")["status"] == "failed"


@pytest.mark.slow
def test_executorch_int8_dynamic_shapes_in_runtime(student, tmp_path):
    pytest.importorskip("executorch")
    from distill.export.executorch import ExecuTorchClassifier, export_executorch

    model, _ = student
    calib = synthetic_batches(model.config.vocab_size, 2, 4, 16)
    path = export_executorch(model, tmp_path / "model-int8.pte", "int8", seq_len=32, calibration=calib)
    clf = ExecuTorchClassifier(path, NAMES, threads=1)
    # batch and sequence other than the export example's (2 x 16), right-padded; batch 1 too
    batches = synthetic_batches(model.config.vocab_size, 2, 5, 23, seed=1) + synthetic_batches(
        model.config.vocab_size, 1, 1, 9
    )
    scale = max(logits_of(model, b).abs().max().item() for b in batches)
    assert max_diff(model, clf, batches) < 0.05 * max(scale, 1e-3)
    meta = json.loads(manifest_path(path).read_text())
    assert meta["format"] == "executorch" and meta["precision"] == "int8" and meta["seq_len"] == 32
    assert [i["name"] for i in meta["inputs"]] == list(NAMES) and meta["inputs"][0]["shape"] == [1, [2, 32]]
    assert path.stat().st_size > 0
    # the bundled program's 4 calibration examples, checked here by ExecuTorch against the PT2E reference
    bundled = meta["bundled_program"]
    assert bundled["cases"] == 4 and bundled["check_here"]["passed"] and bundled["atol"] == 5e-2
    assert bundled["check_here"]["max_abs_diff"] <= bundled["atol"] + bundled["rtol"] * scale


@pytest.mark.slow
def test_cli_litert_failed_parity_keeps_artifact_and_exits_1(monkeypatch, student, glue_dir, capsys):
    pytest.importorskip("litert_torch")
    pytest.importorskip("ai_edge_litert")
    from distill.export import edge, edge_variants

    _, student_dir = student
    # fp32 only, to keep the test short; an impossible agreement threshold makes it fail
    monkeypatch.setitem(edge_variants.FORMAT_VARIANTS, "litert", (edge_variants.LiteRTFP32,))
    monkeypatch.setitem(edge.PARITY_THRESHOLDS, "fp32", (1e-4, 1.01))
    monkeypatch.setenv("DISTILL_DATA_DIR", str(glue_dir))
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import export as script
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    rc = script.main([str(student_dir.parent), "--formats", "litert", "--task", "sst2"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1
    assert err[-1].startswith("error: student_litert_fp32 (max |Δlogit| ") and "marked failed" in err[-1]
    artifact = student_dir.parent / "export" / "litert" / "model-fp32.tflite"
    assert artifact.stat().st_size > 0 and (artifact.parent / "tokenizer.json").is_file()
    meta = json.loads(manifest_path(artifact).read_text())
    assert meta["status"] == "failed" and meta["inputs"][0] == {
        "name": "input_ids",
        "dtype": "int32",
        "shape": [1, 64],
    }
    assert meta["parity"]["max_abs_logit_diff"] < 1e-4 and meta["parity"]["agreement"] == 1.0  # fp32 matches
    report = json.loads((student_dir.parent / "export" / "report.json").read_text())
    row = next(r for r in report["models"] if r["model"] == "student_litert_fp32")
    assert row["notes"]["parity_check"] == "failed" and row["runtime"] == "ai_edge_litert"
    assert row["latency_ms"] > 0 and row["score"] is not None
    # load time and peak memory of the runtime, measured in a fresh process, in the row and the manifest
    assert row["notes"]["load_ms"] > 0 and 0 < row["notes"]["peak_memory_mb"] < 1000
    assert meta["runtime_memory"]["runtime"] == "ai_edge_litert" and meta["runtime_memory"]["threads"] == 1


@pytest.mark.slow
def test_coreml_int8_converts_with_shape_ranges(student, tmp_path):
    pytest.importorskip("coremltools")
    from distill.export.coreml import NOT_CHECKED, export_coreml

    model, _ = student
    path = export_coreml(model, tmp_path / "model-int8.mlpackage", "int8", seq_len=32, max_batch=8)
    meta = json.loads(manifest_path(path).read_text())
    program = meta["program"]
    assert [i["name"] for i in program["inputs"]] == list(NAMES)
    assert program["inputs"][0]["shape"] == [[1, 8], [2, 32]] and program["outputs"][0]["name"] == "logits"
    assert program["ops"].get("constexpr_affine_dequantize", 0) >= 8  # every linear layer's weights are int8
    assert meta["numerics"] == NOT_CHECKED and meta["status"] == "not checked"
    assert torch.isfinite(torch.tensor(program["weights_mb"]))
