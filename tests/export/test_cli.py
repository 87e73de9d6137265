"""export(): run folder → hf/int8/onnx artefacts; scripts/export.py errors are one line with exit status 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from distill.errors import ConfigError, DataError
from distill.export import FORMATS, parse_formats, resolve_student_dir

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "export.py"


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=120)


def saved_student(run: Path) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, num_labels=2)
    BertForSequenceClassification(config).save_pretrained(run / "student")
    return run


def test_cli_unknown_format_lists_allowed_ones(tmp_path):
    proc = run_cli(str(tmp_path), "--formats", "hf,tflite")
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("error: unknown export format 'tflite'; allowed formats: hf, int8, onnx, executorch, "
                                   "litert, coreml.")


def test_cli_missing_directory(tmp_path):
    proc = run_cli(str(tmp_path / "nope"))
    assert proc.returncode == 2
    assert "nope is not a directory" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_script_formats_match_library():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import export as script
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert script.FORMATS == FORMATS


def test_parse_formats_and_resolve_errors(tmp_path):
    assert parse_formats("onnx, hf,hf") == ("onnx", "hf")
    with pytest.raises(ConfigError, match="allowed formats: hf, int8, onnx"):
        parse_formats(["gguf"])
    with pytest.raises(DataError, match="holds no saved student"):
        resolve_student_dir(tmp_path)


def test_cli_empty_run_dir_fails_cleanly(tmp_path):
    proc = run_cli(str(tmp_path), "--formats", "hf")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: ") and "holds no saved student" in proc.stderr


def test_export_run_dir_hf_and_int8(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from distill.export import export
    from distill.quant import load_int8

    run = saved_student(tmp_path)
    written = export(run, "hf,int8")
    assert set(written) == {"hf-fp32", "hf-fp16", "int8"}
    fp16 = AutoModelForSequenceClassification.from_pretrained(written["hf-fp16"])
    assert next(fp16.parameters()).dtype == torch.float16
    ids = torch.randint(0, 120, (2, 8))
    assert load_int8(written["int8"])(input_ids=ids).logits.shape == (2, 2)


@pytest.mark.slow
def test_cli_exports_all_formats(tmp_path):
    run = saved_student(tmp_path)
    proc = run_cli(str(run / "student"), "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    parity = json.loads((tmp_path / "out" / "onnx" / "parity.json").read_text())
    assert parity["fp32"]["agreement"] >= 0.995 and parity["fp32"]["max_abs_diff"] < 1e-4
    assert (tmp_path / "out" / "onnx" / "model.int8.onnx").stat().st_size > 0
    # where the time went: one record per step, on stderr and in steps.json
    steps = json.loads((tmp_path / "out" / "steps.json").read_text())
    names = [s["step"] for s in steps]
    assert names[1:] == ["hf: fp32 + fp16 folders", "int8: torchao dynamic int8", "onnx: export + onnxruntime int8 + parity"]
    assert all(s["wall_s"] >= 0 and s["cpu_s"] >= 0 for s in steps) and "onnx: export" in proc.stderr
