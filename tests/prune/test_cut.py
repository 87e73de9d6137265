"""Structured cuts: exact geometries, a keep-everything cut is the identity, vanilla save / load, bad targets."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from distill.errors import ConfigError
from distill.models.student import count_parameters, pruned_student
from distill.prune import cut_model, estimate_importance, resolve_geometry
from distill.prune.cut import head_columns, select_layers

from .test_importance import batches


def teacher(layers=4, hidden=48, heads=6, ffn=96, vocab=60, positions=32, seed=0):
    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ffn, max_position_embeddings=positions, num_labels=2)).eval()


def logits(model, data):
    with torch.no_grad():
        return torch.cat([model(**{k: b[k] for k in ("input_ids", "attention_mask", "token_type_ids")}).logits
                          for b in data])  # (N, labels)


@pytest.mark.parametrize("method", ["activation", "taylor"])
def test_a_cut_that_keeps_everything_reproduces_the_teacher_exactly(method):
    model, data = teacher(), batches()
    student = pruned_student(model, calibration=data, cut={"importance": method, "layers": "importance"})
    assert student is not model and student.config.to_dict() == model.config.to_dict()
    assert torch.equal(logits(student.eval(), data), logits(model, data))


@pytest.mark.parametrize(("geometry", "case"), [
    ((2, 36, 6, 64), "shorter heads (8 → 6 dims), as tiny's 32 → 26"),
    ((3, 32, 2, 40), "wider heads merging two teacher heads (8 → 16 dims), as mini / micro"),
    ((1, 12, 1, 1), "one of everything but a 12-dim head from two"),
    ((4, 48, 3, 96), "fewer heads only"),
])
def test_each_geometry_is_reached_exactly_and_loads_in_vanilla_transformers(tmp_path, geometry, case):
    model, data = teacher(), batches()
    student = pruned_student(model, *geometry, calibration=data).eval()
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == geometry, case
    assert type(student) is BertForSequenceClassification
    student.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert torch.equal(logits(loaded, data), logits(student, data))
    assert model.config.hidden_size == 48  # the teacher is untouched


@pytest.mark.parametrize(("preset", "geometry", "params"), [
    ("tiny", (4, 312, 12, 1200), 14_350_874), ("mini", (4, 256, 4, 1024), None), ("micro", (2, 128, 2, 512), None),
])
def test_the_presets_geometries_cut_from_a_minilm_shaped_teacher(preset, geometry, params):
    """MiniLM-L6's shape (6 / 384 / 12 heads of 32 / 1536) on a small vocabulary; one calibration batch."""
    model = teacher(layers=6, hidden=384, heads=12, ffn=1536, vocab=60)
    student = pruned_student(model, *geometry, calibration=batches(n=1, b=2, t=8))
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == geometry, preset
    if params:  # the same parameter count as the random-init tiny (BERT vocabulary: 14.35 M)
        full = teacher(layers=6, hidden=384, heads=12, ffn=1536, vocab=30522, positions=512)
        assert count_parameters(pruned_student(full, *geometry, calibration=batches(n=1, b=2, t=8))) == params


def test_importance_decides_what_is_kept():
    model, data = teacher(), batches()
    scores = estimate_importance(model, data)
    scores.heads[2] = torch.tensor([0.0, 5, 1, 4, 2, 3])
    qk, v, scale = head_columns(scores, 2, heads=2, head_dim=8)  # the two best heads, 1 and 3, whole
    assert torch.equal(qk, torch.cat([torch.arange(8, 16), torch.arange(24, 32)])) and torch.equal(qk, v)
    assert scale == 1.0
    merged_qk, _, merged_scale = head_columns(scores, 2, heads=1, head_dim=16)  # heads 1 and 3 merged
    assert torch.equal(merged_qk, qk) and merged_scale == pytest.approx(2**0.5 / 2)
    scores.layers = torch.tensor([0.1, 0.9, 0.2, 0.8])
    assert select_layers(scores, 2).tolist() == [1, 3]
    assert select_layers(scores, 2, "stride").tolist() == [0, 3]
    scores.hidden = torch.zeros(48)
    scores.hidden[[40, 2, 7]] = 1.0
    student = cut_model(model, resolve_geometry(model.config, hidden_size=6, num_attention_heads=1), scores)
    kept = student.bert.embeddings.word_embeddings.weight
    # the three scored channels, then ties broken by the lower index, in index order
    assert torch.equal(kept, model.bert.embeddings.word_embeddings.weight[:, [0, 1, 2, 3, 7, 40]])


@pytest.mark.parametrize(("target", "message"), [
    ({"num_hidden_layers": 5}, "student.num_hidden_layers=5 must be a whole number from 1 to the teacher's 4."),
    ({"num_attention_heads": 8}, "student.num_attention_heads=8 must be a whole number from 1 to the teacher's 6."),
    ({"hidden_size": 64}, "student.hidden_size=64 must be a whole number from 1 to the teacher's 48."),
    ({"intermediate_size": 0}, "student.intermediate_size=0 must be a whole number from 1 to the teacher's 96."),
    ({"hidden_size": 40, "num_attention_heads": 6}, "student.hidden_size=40 must be divisible by"),
    ({"hidden_size": 48, "num_attention_heads": 4}, "use at most 3 heads"),
    ({"cut": {"importance": "random"}}, "student.cut.importance='random' is not one of activation, taylor."),
    ({"cut": {"layers": "first"}}, "student.cut.layers='first' is not one of importance, stride."),
    ({"cut": {"calibration_batches": 0}}, "student.cut.calibration_batches=0 must be a positive number of batches."),
])
def test_bad_targets_stop_before_any_work(target, message):
    model = teacher()
    calls = []
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        pruned_student(model, calibration=iter(calls.append(1) or b for b in batches()), **target)
    assert not calls  # no calibration batch was drawn


def test_no_calibration_data_is_a_config_error():
    with pytest.raises(ConfigError, match="student.cut.calibration_data is not set"):
        pruned_student(teacher())
