"""``student=pruned`` through the composed config: calibration batches read from the task's data."""

import pytest
import torch

from distill.config import build
from distill.data.tasks import get_task
from distill.models.teacher import load_classifier


def test_pruned_preset_cuts_the_teacher_with_the_tasks_data(make_cfg, tiny_teacher):
    cfg = make_cfg("student=pruned", "student.num_hidden_layers=2", "student.hidden_size=24",
                   "student.num_attention_heads=2", "student.intermediate_size=40", "student.cut.calibration_batches=2",
                   "student.cut.importance=taylor")
    teacher = load_classifier(str(tiny_teacher), get_task("sst2"))
    student = build(cfg.student, "student", teacher=teacher)
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (2, 24, 2, 40)
    assert c.vocab_size == teacher.config.vocab_size and c.num_labels == 2


@pytest.mark.slow
def test_a_pruned_student_distils_with_magnitude_pruning_end_to_end(make_cfg, tmp_path):
    """``student=pruned`` + ``+prune=magnitude`` through the real pipeline: the shipped student is 60% sparse, and
    the report has the sparsity column, the ``student_sparse`` row (the compressed export, loaded back), the
    note on dense kernels and a chart point for each."""
    import json

    from transformers import AutoModelForSequenceClassification

    from distill.prune.magnitude import prunable_linears, sparsity
    from distill.prune.sparse_export import load_sparse
    from distill.report.chart import chart_points
    from distill.train import run

    cfg = make_cfg("student=pruned", "student.num_hidden_layers=2", "student.hidden_size=16",
                   "student.num_attention_heads=1", "student.cut.calibration_batches=1", "+prune=magnitude",
                   "callbacks.magnitude_pruning.sparsity=0.6", "callbacks.magnitude_pruning.frequency=1")
    run(cfg)
    out = tmp_path / "run"
    student = AutoModelForSequenceClassification.from_pretrained(out / "student")
    assert student.config.hidden_size == 16
    assert sparsity(prunable_linears(student)) == pytest.approx(0.6, abs=0.01)

    report = json.loads((out / "report.json").read_text())
    rows = {r["model"]: r for r in report["models"]}
    assert list(rows) == ["teacher", "student", "student_sparse"]
    assert rows["teacher"]["sparsity"] == pytest.approx(0.0, abs=1e-3)
    assert rows["student"]["sparsity"] == rows["student_sparse"]["sparsity"] == sparsity(prunable_linears(student))
    assert rows["student"]["geometry"] == "L2 H16 A1 F" + str(student.config.intermediate_size)
    sparse = rows["student_sparse"]
    assert sparse["parity"]["max_abs_logit_diff"] == 0.0 and sparse["score"] == rows["student"]["score"]
    assert sparse["size_mb"] < rows["student"]["size_mb"] == sparse["notes"]["dense_size_mb"]
    assert sparse["path"] == str(out / "compression" / "sparse" / "model.sparse.safetensors")
    back = load_sparse(out / "compression" / "sparse").state_dict()
    assert all(torch.equal(back[k], v) for k, v in student.state_dict().items())
    markdown = (out / "report.md").read_text()
    assert "| sparsity |" in markdown and "Zeros do not speed up dense CPU kernels" in markdown
    assert f"`student_sparse` {sparse['size_mb']:.2f} MB vs {rows['student']['size_mb']:.2f} MB dense" in markdown
    points = {p["model"]: p for p in chart_points(report["models"])}  # speed not measured here: x = size on disk
    assert set(points) == set(rows) and points["student_sparse"]["x"] == sparse["size_mb"]
    assert "60% zeros" in points["student"]["label"] and (out / "report.png").stat().st_size > 0

    # a run made before the row existed: scripts/sparse_export.py's function adds it back under <run>/export/
    from distill.prune.sparse_report import sparse_report

    old = dict(report, models=[{k: v for k, v in r.items() if k not in ("sparsity", "geometry")}
                               for r in report["models"] if r["model"] != "student_sparse"])
    (out / "report.json").write_text(json.dumps(old))
    rebuilt = {r["model"]: r for r in sparse_report(out, cfg.paths.data_dir, task="sst2")["report"]["models"]}
    assert list(rebuilt) == ["teacher", "student", "student_sparse"]
    assert rebuilt["student_sparse"]["path"] == str(out / "export" / "sparse" / "model.sparse.safetensors")
    assert rebuilt["student_sparse"]["size_mb"] == sparse["size_mb"]  # the same bytes as at the end of training
    for name in rows:
        assert (rebuilt[name]["sparsity"], rebuilt[name]["geometry"]) == (rows[name]["sparsity"], rows[name]["geometry"])
    assert json.loads((out / "report.json").read_text())["models"][2]["model"] == "student_sparse"


def test_sparse_export_script_refuses_a_missing_run(tmp_path):
    import subprocess
    import sys

    from conftest import ROOT

    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "sparse_export.py"), str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.strip() == (
        f"error: {tmp_path / 'nope'} is not a directory; give a finished run folder (with student/).")


def test_small_presets_take_the_cut_as_their_init(make_cfg, tiny_teacher):
    """``student=micro +prune@student.prune=cut``: micro's geometry, cut from the teacher."""
    teacher = load_classifier(str(tiny_teacher), get_task("sst2"))
    cfg = make_cfg("student=micro", "+prune@student.prune=cut",
                   "student.num_hidden_layers=2", "student.hidden_size=16", "student.num_attention_heads=1",
                   "student.intermediate_size=24", "student.prune.calibration_batches=1")
    student = build(cfg.student, "student", teacher=teacher)
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (2, 16, 1, 24)
    # the kept rows of the word embeddings are the teacher's, on 16 of its channels
    t_words = teacher.bert.embeddings.word_embeddings.weight
    s_words = student.bert.embeddings.word_embeddings.weight
    assert all(any(torch.equal(s_words[:, j], t_words[:, i]) for i in range(32)) for j in range(16))


def test_bad_cut_settings_name_their_key(make_cfg, tiny_teacher):
    from distill.errors import ConfigError

    teacher = load_classifier(str(tiny_teacher), get_task("sst2"))
    with pytest.raises(ConfigError, match="student.prune.importance='magic' is not one of activation, taylor."):
        build(make_cfg("+prune@student.prune=cut", "student.prune.importance=magic").student, "student", teacher=teacher)
    with pytest.raises(ConfigError, match="student.cut.layers='first' is not one of importance, stride."):
        build(make_cfg("student=pruned", "student.cut.layers=first").student, "student", teacher=teacher)


@pytest.mark.slow
def test_wanda_with_reconstruction_runs_through_the_pipeline(make_cfg, tmp_path):
    """``criterion=wanda reconstruct=true`` in a real fit: the statistics come from the training batches, the
    shipped student is at its target sparsity (not an earlier, less sparse best epoch) and loads in vanilla
    transformers."""
    from transformers import AutoModelForSequenceClassification

    from distill.prune.magnitude import prunable_linears, sparsity
    from distill.train import run

    cfg = make_cfg("student=pruned", "student.num_hidden_layers=2", "student.hidden_size=16",
                   "student.num_attention_heads=1", "student.cut.calibration_batches=1", "+prune=magnitude",
                   "callbacks.magnitude_pruning.sparsity=0.6", "callbacks.magnitude_pruning.frequency=1",
                   "callbacks.magnitude_pruning.criterion=wanda", "callbacks.magnitude_pruning.reconstruct=true")
    run(cfg)
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "student")
    assert sparsity(prunable_linears(student)) == pytest.approx(0.6, abs=0.005)
