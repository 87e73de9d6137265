"""distill.report.render / chart / write_report: every row shown, same columns, atomic files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from distill.report import write_report
from distill.report.render import columns, format_table, to_markdown

NAMES = ("teacher", "student", "student_int8_ptq", "student_onnx_int8")


def _row(name: str, score: float, latency: float | None, size: float) -> dict:
    parity = {"reference": "student", "max_abs_logit_diff": 0.0 if name == "student" else 0.0123,
              "agreement": 1.0 if name == "student" else 0.975}
    return {"model": name, "format": "onnx" if "onnx" in name else "pytorch",
            "precision": "int8" if "int8" in name else "fp32", "runtime": "onnxruntime" if "onnx" in name else "torch",
            "metric": "accuracy", "score": score, "metrics": {"accuracy": score}, "parameters": 1_000_000,
            "parameters_embeddings": 600_000, "parameters_other": 400_000, "size_mb": size, "latency_ms": latency,
            "latency_p90_ms": None if latency is None else latency * 1.2, "throughput_eps": 50.0, "threads": 1,
            "parity": None if name == "teacher" else parity, "retention": score / 0.9, "compression_params": 1.0,
            "compression_size": 90.0 / size, "speedup_latency": None if latency is None else 10.0 / latency,
            "path": f"/x/{name}", "notes": {}}


@pytest.fixture
def report():
    rows = [_row(n, s, lat, size) for n, s, lat, size in zip(
        NAMES, (0.9, 0.85, 0.84, 0.83), (10.0, 2.0, 1.0, 0.5), (90.0, 16.0, 4.5, 4.2), strict=True)]
    settings = {"measure_speed": True, "seq_len": 128, "latency_runs": 50, "throughput_batch": 32,
                "throughput_runs": 5, "reference": "teacher", "parity_reference": "student"}
    hardware = {"cpu": "Test CPU 9000", "cores": 16, "usable_cores": 2, "torch_threads": 1, "torch": "2.x",
                "onnxruntime": "1.x", "gpu": None, "platform": "linux"}
    return {"models": rows, "settings": settings, "hardware": hardware, "task": "sst2", "split": "dev",
            "eval_examples": 872}


def test_console_and_markdown_show_every_row_with_the_same_columns(report):
    table, md = format_table(report), to_markdown(report)
    headers = [h for _, h, _ in columns(report)]
    assert table.splitlines()[0].split() == [w for h in headers for w in h.split()]
    md_header = next(line for line in md.splitlines() if line.startswith("| model"))
    assert md_header == "| " + " | ".join(headers) + " |"
    for name in NAMES:
        assert any(line.startswith(name + " ") for line in table.splitlines())
        assert any(line.startswith(f"| {name} |") for line in md.splitlines())
    assert "| student_onnx_int8 | onnx | int8 | onnxruntime | 0.8300 | 92.2% |" in md
    assert "ex/s @b32" in headers and "accuracy" in headers


def test_markdown_states_settings_hardware_and_parity(report):
    md = to_markdown(report)
    assert md.startswith("# Report: sst2 (dev, 872 examples)\n")
    assert "Test CPU 9000, 16 cores (2 usable), 1 torch threads" in md and "no GPU" in md
    assert "50 runs" in md and "sequence length 128" in md
    parity = next(line for line in md.splitlines() if line.startswith("Parity vs `student`"))
    assert "student_int8_ptq: max |Δlogit| 1.23e-02, agreement 97.50%" in parity
    assert "student:" not in parity and "teacher" not in parity  # the reference itself and rows without parity


def test_missing_values_render_as_dashes(report):
    report["models"][0].update(latency_ms=None, parameters=None)
    table = format_table(report)
    assert table.splitlines()[2].split()[:7] == ["teacher", "pytorch", "fp32", "torch", "0.9000", "100.0%", "-"]


def test_write_report_writes_json_markdown_and_chart(report, tmp_path):
    write_report(tmp_path / "run", report)
    run = tmp_path / "run"
    assert sorted(p.name for p in run.iterdir()) == ["report.json", "report.md", "report.png"]  # no temp files left
    assert json.loads((run / "report.json").read_text()) == report
    assert (run / "report.md").read_text() == to_markdown(report)
    png = (run / "report.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_write_report_is_atomic(report, tmp_path, monkeypatch):
    """Each file is written whole next to its target, then moved onto it: the old one stays readable until then."""
    import os

    import distill.checkpoint as atomic
    import distill.report.render as render

    write_report(tmp_path, report)
    old = {name: (tmp_path / name).read_bytes() for name in ("report.json", "report.md", "report.png")}
    moves, real_replace = [], os.replace

    def spy(src, dst):
        assert Path(dst).read_bytes() == old[os.path.basename(dst)]  # target untouched so far
        assert os.path.dirname(src) == os.path.dirname(dst) and os.path.getsize(src) > 0
        moves.append(os.path.basename(dst))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", spy)
    write_report(tmp_path, dict(report, task="cola"))
    assert sorted(moves) == ["report.json", "report.md", "report.png"]
    assert json.loads((tmp_path / "report.json").read_text())["task"] == "cola"

    monkeypatch.setattr(render.json, "dumps", lambda *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        write_report(tmp_path, dict(report, task="rte"))
    assert json.loads((tmp_path / "report.json").read_text())["task"] == "cola"  # a failed write changes nothing


def test_chart_without_speed_uses_size(report, tmp_path):
    for row in report["models"]:
        row["latency_ms"] = None
    write_report(tmp_path, report)
    assert (tmp_path / "report.png").stat().st_size > 5000


def test_sparsity_column_and_note_with_the_compressed_size(report, tmp_path):
    from distill.report.chart import chart_points

    assert "sparsity" in [h for _, h, _ in columns(report)]
    assert "Zeros do not speed up" not in to_markdown(report)  # no sparse row: no note
    rows = report["models"]
    for row in rows:
        row["sparsity"] = 0.0 if row["model"] == "teacher" else 0.9
    rows.append(dict(rows[1], model="student_sparse", format="safetensors-bitmask", size_mb=5.25,
                     notes={"dense_size_mb": 16.0, "layout": "1-bit mask + values"}))
    md = to_markdown(report)
    assert "| student_sparse | safetensors-bitmask | fp32 | torch | 0.8500 | 94.4% | – | 1,000,000 | 600,000 | 90.0% " \
           "| 5.25 |" in md
    note = next(line for line in md.splitlines() if line.startswith("Sparsity is"))
    assert "student 90.0%" in note and "teacher" not in note.split(":")[1]
    assert "`student_onnx_int8`: counted on the PyTorch weights it was exported from" in note
    assert "(the zeros left out, 1-bit mask + values): `student_sparse` 5.25 MB vs 16.00 MB dense." in note
    assert "Zeros do not speed up dense CPU kernels" in note
    points = chart_points(rows)
    assert [p["model"] for p in points] == ["student_onnx_int8", "student_int8_ptq", "student", "student_sparse",
                                            "teacher"]  # every row, in latency order
    assert points[3]["label"] == "student_sparse\n5.2 MB, 90% zeros" and points[4]["label"] == "teacher\n90.0 MB"
    write_report(tmp_path, report)
    assert (tmp_path / "report.png").stat().st_size > 5000
