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


def test_a_pruned_student_distils_with_magnitude_pruning_end_to_end(make_cfg, tmp_path):
    """``student=pruned`` + ``+prune=magnitude`` through the real pipeline; the shipped student is 60% sparse."""
    from transformers import AutoModelForSequenceClassification

    from distill.prune.magnitude import prunable_linears, sparsity
    from distill.train import run

    cfg = make_cfg("student=pruned", "student.num_hidden_layers=2", "student.hidden_size=16",
                   "student.num_attention_heads=1", "student.cut.calibration_batches=1", "+prune=magnitude",
                   "callbacks.magnitude_pruning.sparsity=0.6", "callbacks.magnitude_pruning.frequency=1")
    run(cfg)
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "student")
    assert student.config.hidden_size == 16
    assert sparsity(prunable_linears(student)) == pytest.approx(0.6, abs=0.01)


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
