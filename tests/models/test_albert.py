from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from distill.errors import ConfigError
from distill.losses.capture import self_attention_modules
from distill.models.albert import albert_student
from distill.models.student import count_parameters

LOSS_DIR = Path(__file__).resolve().parents[2] / "conf" / "loss"
BATCH = {
    "input_ids": torch.tensor([[2, 11, 12, 13, 3], [2, 21, 3, 0, 0]]),
    "attention_mask": torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]),
    "labels": torch.tensor([0, 1]),
}


def _teacher(hidden=48, layers=4, labels=2):
    torch.manual_seed(1)
    config = BertConfig(vocab_size=100, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=labels)
    return BertForSequenceClassification(config).eval()


def _student(teacher, share_layers=True, **kw):
    torch.manual_seed(0)
    geometry = {"embedding_size": 16, "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 2,
                "intermediate_size": 40} | kw
    return albert_student(teacher, share_layers=share_layers, **geometry)


def _objective(name, student, teacher):
    with initialize_config_dir(config_dir=str(LOSS_DIR), version_base=None):
        cfg = compose(config_name=name)
    terms = {key: instantiate(node, _partial_=True)(student_config=student.config, teacher_config=teacher.config)
             for key, node in (cfg.get("terms") or {}).items()}
    return instantiate(cfg, terms=terms)


def test_vocabulary_positions_and_labels_come_from_the_teacher_and_sharing_switches():
    teacher = _teacher(labels=3)
    shared, unshared = _student(teacher, True), _student(teacher, False)
    for s in (shared, unshared):
        c = s.config
        assert (c.vocab_size, c.max_position_embeddings, c.num_labels, c.embedding_size) == (100, 64, 3, 16)
        assert s.albert.embeddings.word_embeddings.weight.shape == (100, 16)  # factorized: V × E, then E → H
    assert shared.config.num_hidden_groups == 1 and unshared.config.num_hidden_groups == 4
    assert len(self_attention_modules(shared)) == 1 and len(self_attention_modules(unshared)) == 4
    assert count_parameters(unshared) > count_parameters(shared)


def test_albert_tiny_preset_is_a_third_of_tiny_and_saves_for_vanilla_transformers(tmp_path):
    minilm = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512, num_labels=2)
    with torch.device("meta"):
        teacher = AutoModelForSequenceClassification.from_config(minilm)
        shared, unshared = albert_student(teacher), albert_student(teacher, share_layers=False)
    # tiny has 14,350,874: the all-shared student is 36.6% of it, 3.91 M of it the 30,522 × 128 word table
    assert (count_parameters(shared), count_parameters(unshared)) == (5_253_578, 8_680_130)

    student = _student(_teacher())
    student.save_pretrained(tmp_path)
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        want = student.eval()(**{k: BATCH[k] for k in ("input_ids", "attention_mask")}).logits  # (B, C)
        got = loaded(**{k: BATCH[k] for k in ("input_ids", "attention_mask")}).logits
    assert type(loaded).__name__ == "AlbertForSequenceClassification" and torch.equal(got, want)


# attention terms on shared layers are refused (test_hooked_attention_terms_refuse_a_student_with_shared_layers)
@pytest.mark.parametrize(("loss", "share_layers"), [("tinybert_intermediate", False), ("minilm", False),
                                                    ("distilbert", True), ("distilbert", False)])
def test_hidden_state_and_attention_losses_train_the_student(loss, share_layers):
    teacher = _teacher()
    student = _student(teacher, share_layers)
    student.set_attn_implementation("eager")  # as fit_phase does for losses that read attention probabilities
    objective = _objective(loss, student, teacher)
    objective.attach(student, teacher)  # what DistillationModule does when it is built
    need = objective.requires
    flags = {"output_hidden_states": "hidden_states" in need, "output_attentions": "attentions" in need}
    inputs = {k: BATCH[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        t_out = teacher(**inputs, **flags)
    out = student(**inputs, **flags)
    if flags["output_hidden_states"]:
        assert len(out.hidden_states) == 5 and out.hidden_states[0].shape[-1] == 32  # one per layer call
    loss_value, _ = objective(out, t_out, BATCH, 0, 10)
    loss_value.backward()
    assert torch.isfinite(loss_value) and loss_value.item() > 0
    # MiniLM reads only the last layer's Q/K/V: that layer's FFN gets no gradient, so not "all"
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.albert.encoder.parameters())
    for term in objective.terms.values():
        if hasattr(term, "detach"):
            term.detach()


def test_hooked_attention_terms_refuse_a_student_with_shared_layers():
    """Hooks see modules, not calls: on a shared ALBERT block they would read one layer of four. Refused."""
    teacher = _teacher()
    term = _objective("tinybert_intermediate", _student(teacher, True), teacher).terms["attention"]
    with pytest.raises(ConfigError, match="runs one shared attention block for its 4 layers"):
        term.attach(_student(teacher, True), teacher)
    term.attach(_student(teacher, False), teacher)  # unshared: every layer is its own module
    assert term.depths() == (4, 4)
    term.detach()


@pytest.mark.parametrize(("kw", "match"), [
    ({"embedding_size": 64}, "embedding_size=64 must not exceed student.hidden_size=32"),
    ({"num_attention_heads": 5}, "hidden_size=32 must be divisible by student.num_attention_heads=5"),
    ({"num_hidden_layers": 0}, "num_hidden_layers=0 must be a positive whole number"),
])
def test_wrong_geometry_stops_with_one_sentence(kw, match):
    with pytest.raises(ConfigError, match=match):
        _student(_teacher(), **kw)
