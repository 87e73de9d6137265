import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

from distill.config import check_pair
from distill.data.tasks import get_task
from distill.errors import ConfigError
from distill.models.student import bert_student, count_parameters, distil_student, pretrained_student
from distill.models.teacher import cache_key, load_classifier


def _teacher(layers=4, hidden=32, vocab=50, labels=2):
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                     intermediate_size=64, num_labels=labels)
    return BertForSequenceClassification(cfg).eval()


def test_bert_student_geometry_and_shared_vocab():
    teacher = _teacher()
    student = bert_student(teacher, num_hidden_layers=2, hidden_size=24, num_attention_heads=4, intermediate_size=40)
    c = student.config
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size) == (2, 24, 4, 40)
    assert c.vocab_size == teacher.config.vocab_size and c.num_labels == 2
    assert teacher.config.hidden_size == 32  # the teacher's config was not mutated


def test_tiny_preset_parameter_count_matches_tinybert4():
    # TinyBERT-4 (4 layers, 312 hidden, FFN 1200) on BERT's 30,522-token vocabulary: 14.35 M parameters
    # with a 2-way head (the paper quotes 14.5 M including its pre-training heads).
    teacher = BertForSequenceClassification(BertConfig(num_labels=2))
    student = bert_student(teacher, 4, 312, 12, 1200)
    assert count_parameters(student) == 14_350_874


def test_distil_student_copies_every_other_layer():
    teacher = _teacher(layers=4)
    student = distil_student(teacher)
    assert student.config.num_hidden_layers == 2
    sd, td = student.state_dict(), teacher.state_dict()
    for i, j in ((0, 0), (1, 2)):
        key = f"bert.encoder.layer.{i}.attention.self.query.weight"
        assert torch.equal(sd[key], td[key.replace(f"layer.{i}.", f"layer.{j}.")])
    assert torch.equal(sd["bert.embeddings.word_embeddings.weight"], td["bert.embeddings.word_embeddings.weight"])
    assert torch.equal(sd["classifier.weight"], td["classifier.weight"])


def test_bad_geometry_and_stride():
    with pytest.raises(ConfigError, match="divisible"):
        bert_student(_teacher(), 2, 30, 4, 40)
    with pytest.raises(ConfigError, match="layer_stride=8"):
        distil_student(_teacher(layers=4), layer_stride=8)


def test_check_pair_refuses_vocab_and_label_mismatch(tmp_path):
    from conftest import make_tokenizer

    tok = make_tokenizer(tmp_path / "tok")
    teacher = _teacher(vocab=len(tok))
    other = _teacher(vocab=len(tok) + 7)
    with pytest.raises(ConfigError, match="student vocabulary .* does not match the teacher's"):
        check_pair(other, teacher, tok)
    with pytest.raises(ConfigError, match="3 labels but the teacher has 2"):
        check_pair(_teacher(vocab=len(tok), labels=3), teacher, tok)
    small = _teacher(vocab=5)
    with pytest.raises(ConfigError, match="tokenizer has .* tokens"):
        check_pair(small, small, tok)


def test_pretrained_student_and_label_count_check(tmp_path):
    teacher = _teacher()
    teacher.save_pretrained(tmp_path / "t")
    student = pretrained_student(teacher, str(tmp_path / "t"))
    assert isinstance(student, BertForSequenceClassification)
    with pytest.raises(ConfigError, match="has 2 labels but task 'stsb' needs 1"):
        load_classifier(str(tmp_path / "t"), get_task("stsb"))
    loaded = load_classifier(str(tmp_path / "t"), get_task("sst2"))
    assert torch.equal(loaded.classifier.weight, teacher.classifier.weight)


def test_cache_key_changes_with_settings():
    spec = get_task("sst2")
    a = cache_key("/x/model", spec, {"lr": 1e-4})
    assert a == cache_key("/x/model", spec, {"lr": 1e-4})
    assert a != cache_key("/x/model", spec, {"lr": 2e-4})
    assert a.startswith("x-sst2-")


def test_saved_student_loads_in_plain_transformers(tmp_path):
    student = bert_student(_teacher(), 2, 16, 2, 32)
    student.save_pretrained(tmp_path / "s")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "s")
    ids = torch.tensor([[1, 5, 7, 2]])
    assert torch.allclose(again(input_ids=ids).logits, student.eval()(input_ids=ids).logits)


def test_teacher_pca_embeddings_copy_tables_at_equal_width():
    teacher = _teacher(hidden=32)
    student = bert_student(teacher, 2, 32, 2, 40, init_embeddings="teacher_pca")
    for name in ("word_embeddings", "position_embeddings", "token_type_embeddings"):
        s, t = getattr(student.bert.embeddings, name).weight, getattr(teacher.bert.embeddings, name).weight
        assert torch.equal(s, t), name
    assert not torch.equal(student.bert.encoder.layer[0].attention.self.query.weight[:, :32],
                           teacher.bert.encoder.layer[0].attention.self.query.weight[:, :32])  # layers stay random


def test_teacher_pca_embeddings_keep_word_geometry_when_narrower():
    teacher = _teacher(hidden=32, vocab=50)
    g = torch.Generator().manual_seed(1)
    # teacher words that vary in only 8 directions (plus an offset): an 8-wide PCA projection loses nothing
    low_rank = torch.randn(50, 8, generator=g) @ torch.randn(8, 32, generator=g) + torch.randn(32, generator=g)
    teacher.bert.embeddings.word_embeddings.weight.data.copy_(low_rank)
    student = bert_student(teacher, 2, 8, 2, 16, init_embeddings="teacher_pca")
    s = student.bert.embeddings.word_embeddings.weight.detach().double()
    t = low_rank.double()
    assert s.shape == (50, 8)
    assert torch.allclose(torch.cdist(s, s), torch.cdist(t, t), atol=1e-4)  # every pairwise distance kept
    # and the projection is the teacher's tables times orthonormal columns
    from distill.models.student import init_embeddings_from_teacher

    proj = init_embeddings_from_teacher(student, teacher).double()
    assert torch.allclose(proj.T @ proj, torch.eye(8, dtype=torch.float64), atol=1e-6)
    pos_t = teacher.bert.embeddings.position_embeddings.weight.detach().double()
    assert torch.allclose(student.bert.embeddings.position_embeddings.weight.double(), pos_t @ proj, atol=1e-5)


def test_teacher_pca_embeddings_wider_student_and_bad_inputs():
    from distill.models.student import init_embeddings_from_teacher

    teacher = _teacher(hidden=32)
    with pytest.raises(ConfigError, match="student.init_embeddings='pca'"):
        bert_student(teacher, 2, 32, 2, 40, init_embeddings="pca")
    wide = bert_student(teacher, 2, 48, 2, 40, init_embeddings="teacher_pca")  # wider: tables in the first columns
    t = teacher.bert.embeddings.word_embeddings.weight
    assert torch.equal(wide.bert.embeddings.word_embeddings.weight[:, :32], t)
    assert wide.bert.embeddings.word_embeddings.weight[:, 32:].abs().sum() > 0  # the rest keeps its random init
    other = _teacher(hidden=32, vocab=60)
    with pytest.raises(ConfigError, match="needs the teacher's vocabulary"):
        init_embeddings_from_teacher(bert_student(other, 2, 16, 2, 40), teacher)
