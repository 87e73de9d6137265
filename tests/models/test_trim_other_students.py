"""``student.trim_vocab=true`` for the MobileBERT-style student and for a student loaded from a checkpoint: each
keeps exactly the trimmed tokenizer's rows, ships loadable by vanilla transformers, and gives the untrimmed
model's logits on text whose pieces are all kept."""

from __future__ import annotations

import json

import pytest
import torch
from test_trim_student import _rows, trim_glue  # noqa: F401  (trim_glue is a fixture)
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distill.errors import ConfigError
from distill.models.mobilebert import mobilebert_student
from distill.models.student import bert_student, pretrained_student
from distill.models.trim_student import TRIM_FILE, trimmed_tokenizer_dir


def _trimmed_folder(glue, teacher_dir, tmp_path):
    train_texts, _ = _rows(glue, "train")
    return train_texts, trimmed_tokenizer_dir(str(teacher_dir), train_texts, tmp_path / "cache", "sst2")


def _same_logits(plain, trimmed, folder, teacher_dir, texts, tmp_path) -> torch.Tensor:
    """Save ``trimmed`` with the trimmed tokenizer, load both back with vanilla transformers and return the
    largest |Δ logit| against ``plain`` reading the teacher's ids."""
    out = tmp_path / "shipped"
    trimmed.save_pretrained(out)
    AutoTokenizer.from_pretrained(folder).save_pretrained(out)
    loaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tok, teacher_tok = AutoTokenizer.from_pretrained(out), AutoTokenizer.from_pretrained(teacher_dir)
    assert type(loaded) is type(plain)
    with torch.no_grad():
        a = plain.eval()(**teacher_tok(texts, padding=True, return_tensors="pt")).logits
        b = loaded(**tok(texts, padding=True, return_tensors="pt")).logits
    return (a - b).abs().max()


def test_mobilebert_student_trims_its_narrow_table_exactly(trim_glue, tiny_teacher, tmp_path):  # noqa: F811
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    texts, folder = _trimmed_folder(trim_glue, tiny_teacher, tmp_path)
    geometry = dict(embedding_size=8, intra_bottleneck_size=16, intermediate_size=32, num_feedforward_networks=2)
    torch.manual_seed(3)
    plain = mobilebert_student(teacher, **geometry)
    torch.manual_seed(3)
    trimmed = mobilebert_student(teacher, **geometry, tokenizer=str(folder), trim_vocab=True)
    kept = json.loads((folder / TRIM_FILE).read_text())["kept_ids"]
    assert len(kept) < teacher.config.vocab_size
    assert trimmed.get_input_embeddings().weight.shape == (len(kept), 8)
    assert torch.equal(trimmed.get_input_embeddings().weight, plain.get_input_embeddings().weight[kept])
    assert _same_logits(plain, trimmed, folder, tiny_teacher, texts[:8], tmp_path) == 0


def test_pretrained_student_trims_a_checkpoint_over_the_teachers_vocabulary(trim_glue, tiny_teacher,  # noqa: F811
                                                                              tmp_path):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    texts, folder = _trimmed_folder(trim_glue, tiny_teacher, tmp_path)
    torch.manual_seed(5)
    bert_student(teacher, 2, 16, 2, 32).save_pretrained(tmp_path / "ckpt")
    plain = pretrained_student(teacher, str(tmp_path / "ckpt"))
    trimmed = pretrained_student(teacher, str(tmp_path / "ckpt"), tokenizer=str(folder), trim_vocab=True)
    kept = json.loads((folder / TRIM_FILE).read_text())["kept_ids"]
    assert trimmed.config.vocab_size == len(kept) < plain.config.vocab_size
    assert _same_logits(plain, trimmed, folder, tiny_teacher, texts[:8], tmp_path) == 0


def test_pretrained_student_of_another_vocabulary_is_refused(trim_glue, tiny_teacher, tmp_path):  # noqa: F811
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    _, folder = _trimmed_folder(trim_glue, tiny_teacher, tmp_path)
    student = bert_student(teacher, 2, 16, 2, 32)
    student.resize_token_embeddings(teacher.config.vocab_size + 7)
    student.save_pretrained(tmp_path / "other")
    rows = teacher.config.vocab_size
    with pytest.raises(ConfigError) as err:
        pretrained_student(teacher, str(tmp_path / "other"), tokenizer=str(folder), trim_vocab=True)
    assert str(err.value) == (
        f"student.trim_vocab=true trims the teacher's vocabulary, but {tmp_path / 'other'} has {rows + 7} word-table "
        f"rows and the teacher {rows}; load a student over the teacher's vocabulary or set student.trim_vocab=false.")
    with pytest.raises(ConfigError, match="needs the trimmed tokenizer as student.tokenizer"):
        pretrained_student(teacher, str(tmp_path / "other"), trim_vocab=True)
