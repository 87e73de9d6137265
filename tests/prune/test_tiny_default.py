"""``student=tiny`` is cut from the teacher by default (``student.prune``, conf/prune/cut.yaml): the same student
as ``student=pruned`` at tiny's geometry; ``student.prune=null`` gives TinyBERT's init; a teacher too small for
the preset gets one sentence that says how to build it uncut."""

import pytest
import torch

from distill.config import build
from distill.data.tasks import get_task
from distill.errors import ConfigError
from distill.models.teacher import load_classifier

GEOMETRY = ("student.num_hidden_layers=2", "student.hidden_size=24", "student.num_attention_heads=2",
            "student.intermediate_size=40")


def test_tiny_is_the_pruned_preset_at_its_geometry(make_cfg, tiny_teacher):
    teacher = load_classifier(str(tiny_teacher), get_task("sst2"))
    tiny = build(make_cfg("student=tiny", *GEOMETRY, "student.prune.calibration_batches=2").student, "student",
                 teacher=teacher)
    pruned = build(make_cfg("student=pruned", *GEOMETRY, "student.cut.calibration_batches=2").student, "student",
                   teacher=teacher)
    a, b = tiny.state_dict(), pruned.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and its layers are the teacher's: each row of the first layer's value weights is part of a teacher row
    t_value = teacher.bert.encoder.layer[0].attention.self.value.weight  # (32, 32); stride keeps layer 0
    s_value = tiny.bert.encoder.layer[0].attention.self.value.weight  # (24, 24)
    assert all(any(torch.isin(row, t_row).all() for t_row in t_value) for row in s_value)


def test_tiny_without_the_cut_starts_its_layers_at_random(make_cfg, tiny_teacher):
    teacher = load_classifier(str(tiny_teacher), get_task("sst2"))
    torch.manual_seed(0)
    a = build(make_cfg("student=tiny", *GEOMETRY, "student.prune=null").student, "student", teacher=teacher)
    torch.manual_seed(1)
    b = build(make_cfg("student=tiny", *GEOMETRY, "student.prune=null").student, "student", teacher=teacher)
    query = lambda m: m.bert.encoder.layer[0].attention.self.query.weight  # noqa: E731
    assert not torch.equal(query(a), query(b))  # random layers: another seed, other weights


def test_a_teacher_narrower_than_tiny_says_how_to_build_it_uncut(make_cfg, tiny_teacher):
    teacher = load_classifier(str(tiny_teacher), get_task("sst2"))  # 32 wide; tiny is 312
    with pytest.raises(ConfigError, match=r"^student.num_hidden_layers=4 .*|^student.hidden_size=312 .*") as err:
        build(make_cfg("student=tiny").student, "student", teacher=teacher)
    assert str(err.value).endswith("(the student is cut from the teacher; student.prune=null builds it with random "
                                   "layers instead).")
