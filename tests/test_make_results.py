"""scripts/make_results.py: docs/RESULTS.md from run_suite records (hand-made records, no training)."""

import json
import subprocess
import sys

from conftest import ROOT, write_glue_fixture


def _entry(task, label, command, teacher, student, wall=120.0, compression=None, rc=0, variants=()):
    """A run_suite record; ``variants``: int8 rows in report.json (the one schema), ``compression``: an
    older record's separate compression report."""
    def row(model, score, **extra):
        return {"model": model, "metric": "accuracy", "score": score, "parameters": 10, "size_mb": 1.0,
                "latency_ms": 5.0, **extra}

    report = {"task": task, "train_examples": 4000, "eval_examples": 872,
              "models": [row("teacher", teacher, retention=1.0),
                         row("student", student, retention=student / teacher, speedup_latency=2.0),
                         *(row(name, score, retention=score / teacher) for name, score in variants)]}
    entry = {"label": f"{task}: {label}", "command": command, "wall_s": wall, "returncode": rc}
    if rc == 0:
        entry["report"] = report
    else:
        entry["error"] = "error: boom"
    if compression:
        entry["compression"] = {"models": [row(name, score, retention=score / teacher) for name, score in compression]}
    return entry


def test_make_results_rows_targets_and_failures(tmp_path):
    records = [
        _entry("mrpc", "tiny, TinyBERT two-stage", "python train.py experiment=tinybert_sst2 data=mrpc", 0.80, 0.78),
        _entry("sst2", "distil, DistilBERT recipe", "python train.py experiment=distilbert_sst2", 0.85, 0.83),
        _entry("rte", "distil, DistilBERT recipe", "python train.py experiment=distilbert_sst2 data=rte", 0.6, 0.0, rc=1),
    ]
    quant = [_entry("sst2", "tiny QAT int8", "python train.py student=tiny quant=qat_int8", 0.85, 0.78,
                    compression=[("teacher", 0.85), ("student_int8_qat", 0.779), ("student_int8_ptq", 0.77)]),
             _entry("sst2", "tiny fp32 + PTQ int8", "python train.py student=tiny quant=ptq_int8", 0.85, 0.8,
                    variants=[("student_int8_ptq", 0.791), ("student_onnx_int8", 0.789)])]
    (tmp_path / "glue.json").write_text(json.dumps(records))
    (tmp_path / "quant.json").write_text(json.dumps(quant))
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_results.py"), str(tmp_path / "glue.json"),
                           str(tmp_path / "quant.json"), "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    md = out.read_text()
    lines = md.splitlines()
    rows = [line for line in lines if line.startswith("| ") and "`python train.py" in line]
    assert rows[0].startswith("| sst2 ")  # task order: SST-2 first, then MRPC
    assert any(r.startswith("| mrpc ") and "| student fp32 |" in r and "| 97.5% |" in r for r in rows)
    assert any("| student int8 (QAT) |" in r and "| 0.7790 |" in r for r in rows)  # an older record
    ptq = [r for r in rows if "quant=ptq_int8" in r]  # a record of the one schema: every row in report.json
    assert [r.split(" | ")[3] for r in ptq] == ["teacher", "student fp32", "student int8 (PTQ)", "student ONNX int8"]
    assert "| 0.7910 |" in ptq[2] and "| 0.7890 |" in ptq[3]
    assert any("failed: error: boom" in r for r in rows)
    assert "- sst2, `distil` (distil, DistilBERT recipe): retention 97.6% (target ≥ 97%): met" in lines
    assert "- mrpc, `tiny` (tiny, TinyBERT two-stage): retention 97.5% (target ≥ 95%): met" in lines
    assert "Sanh et al. 2019" in md and "Jiao et al. 2020" in md


def test_make_results_names_a_missing_record(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_results.py"), str(tmp_path / "nope.json")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no such suite record" in proc.stderr


def test_make_results_flags_a_student_at_the_majority_class(tmp_path):
    glue = write_glue_fixture(tmp_path / "glue")  # SST-2 dev: 20 rows, half of each label
    record = [_entry("sst2", "tiny, TinyBERT two-stage", "python train.py experiment=tinybert_sst2", 0.52, 0.5)]
    (tmp_path / "glue.json").write_text(json.dumps(record))
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_results.py"), str(tmp_path / "glue.json"),
                           "--out", str(out), "--data-dir", str(glue)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    lines = out.read_text().splitlines()
    assert "| sst2 | – / 872 | majority class | – | accuracy | 0.5000 | | accuracy 0.5000 | | | | | | |" in lines
    assert ("- sst2, `tiny` (tiny, TinyBERT two-stage): retention 96.2% (target ≥ 95%): NOT met: the student "
            "scores no better than always predicting the majority class") in lines
