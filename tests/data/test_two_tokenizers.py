"""A student with its own tokenizer: batches carry both tokenizations, logit-level distillation runs end to end,
losses that need one token sequence stop before any work, and identical tokenizers change nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertTokenizerFast

from distill.config import check_pair
from distill.data.glue import GLUEDataModule, student_view
from distill.errors import ConfigError
from distill.train import run
from tests.conftest import SPECIALS, WORDS

STUDENT_KEYS = ("student_input_ids", "student_attention_mask", "student_token_type_ids")


def make_other_tokenizer(path: Path) -> BertTokenizerFast:
    """A WordPiece tokenizer over the same words as the fixture's, in another order, with more pieces (and
    other special-token ids), saved at ``path``: every fixture sentence tokenizes to other ids of the same pieces."""
    path.mkdir(parents=True, exist_ok=True)
    extra = ["extra", "pieces", "##s", "##ing", "##ed"]
    tokens = [*extra, SPECIALS[1], SPECIALS[0], *SPECIALS[2:], *sorted(set(WORDS), reverse=True),
              *"zyxwvutsrqponmlkjihgfedcba"]
    tokens = list(dict.fromkeys(tokens))  # "a" is a word and a letter: one id, ids 0..V-1
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(tokens)}, do_lower_case=True)
    tokenizer.save_pretrained(path)
    return tokenizer


@pytest.fixture(scope="module")
def other_tokenizer(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("student_tokenizer")
    make_other_tokenizer(path)
    return path


def _dm(glue_dir, teacher, task="mrpc", **kwargs) -> GLUEDataModule:
    return GLUEDataModule(task, data_dir=str(glue_dir), tokenizer=str(teacher), batch_size=8, eval_batch_size=8,
                          **kwargs)


def _texts(tokenizer, ids: torch.Tensor, mask: torch.Tensor) -> list[str]:
    return [tokenizer.decode(row[m.bool()].tolist(), skip_special_tokens=True) for row, m in zip(ids, mask)]


def test_batches_carry_both_tokenizations_that_decode_to_the_same_text(glue_dir, tiny_teacher, other_tokenizer):
    dm = _dm(glue_dir, tiny_teacher)  # sentence pairs: token_type_ids on both sides
    student_tok = dm.use_student_tokenizer(str(other_tokenizer))
    assert student_tok is not None and len(student_tok) != len(dm.tokenizer)
    dm.setup("fit")
    for batch in (next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))):
        assert set(STUDENT_KEYS) <= set(batch)
        assert batch["student_input_ids"].shape[0] == batch["input_ids"].shape[0] == batch["labels"].shape[0]
        teacher_texts = _texts(dm.tokenizer, batch["input_ids"], batch["attention_mask"])
        student_texts = _texts(student_tok, batch["student_input_ids"], batch["student_attention_mask"])
        assert teacher_texts == student_texts and all(teacher_texts)
        # other ids for the same pieces, and each side padded with its own pad id
        assert not torch.equal(batch["input_ids"], batch["student_input_ids"])
        pads = batch["student_input_ids"][batch["student_attention_mask"] == 0]
        assert bool((pads == student_tok.pad_token_id).all()) and student_tok.pad_token_id == 6
        assert batch["student_token_type_ids"].max() == 1  # the second sentence of each pair
        view = student_view(batch)
        assert torch.equal(view["input_ids"], batch["student_input_ids"]) and "student_input_ids" not in view
        assert torch.equal(view["labels"], batch["labels"])


def test_identical_tokenizer_changes_nothing(glue_dir, tiny_teacher):
    plain, same = _dm(glue_dir, tiny_teacher, task="sst2"), _dm(glue_dir, tiny_teacher, task="sst2")
    assert same.use_student_tokenizer(str(tiny_teacher)) is None and same.student_tokenizer is None
    plain.setup("validate")
    same.setup("validate")
    for a, b in zip(plain.val_dataloader(), same.val_dataloader(), strict=True):
        assert set(a) == set(b) and not any(k.startswith("student_") for k in b)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_student_builds_over_its_own_vocabulary_with_shared_rows(tiny_teacher, other_tokenizer):
    from distill.models.student import bert_student

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    geometry = dict(num_hidden_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                    init_embeddings="teacher_pca")
    plain = bert_student(teacher, **geometry)
    own = bert_student(teacher, **geometry, tokenizer=str(other_tokenizer))
    t_vocab, s_vocab = AutoTokenizer.from_pretrained(tiny_teacher).get_vocab(), AutoTokenizer.from_pretrained(
        other_tokenizer).get_vocab()
    assert own.config.vocab_size == len(s_vocab) != teacher.config.vocab_size
    assert own.config.pad_token_id == s_vocab["[PAD]"]
    own_rows, plain_rows = own.get_input_embeddings().weight, plain.get_input_embeddings().weight
    shared = [p for p in s_vocab if t_vocab.get(p, len(plain_rows)) < len(plain_rows)]  # the fixture's "z" has no row
    assert len(shared) > 40
    for piece in shared:  # every piece both vocabularies have: the teacher's PCA row, moved to the student's id
        assert torch.equal(own_rows[s_vocab[piece]], plain_rows[t_vocab[piece]]), piece
    new_only = [i for p, i in s_vocab.items() if p not in t_vocab]
    assert new_only and float(own_rows[new_only].detach().std()) > 0  # pieces the teacher lacks start random
    same = bert_student(teacher, **geometry, tokenizer=str(tiny_teacher))  # the teacher's: nothing changes
    assert torch.equal(same.get_input_embeddings().weight, plain_rows)


def test_check_pair_allows_another_vocabulary_only_with_the_students_own_tokenizer(tiny_teacher, other_tokenizer):
    from distill.models.student import bert_student

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    t_tok, s_tok = AutoTokenizer.from_pretrained(tiny_teacher), AutoTokenizer.from_pretrained(other_tokenizer)
    student = bert_student(teacher, 1, 16, 2, 32, tokenizer=str(other_tokenizer))
    check_pair(student, teacher, t_tok, s_tok)
    with pytest.raises(ConfigError, match="the student must use the teacher's tokenizer"):
        check_pair(student, teacher, t_tok)
    with pytest.raises(ConfigError, match=r"^student.tokenizer has \d+ tokens but the student's vocabulary has"):
        check_pair(bert_student(teacher, 1, 16, 2, 32), teacher, t_tok, s_tok)


def test_kd_with_two_tokenizers_runs_end_to_end_and_ships_the_students_tokenizer(make_cfg, tmp_path, glue_dir,
                                                                                 other_tokenizer, monkeypatch):
    import distill.stages.distill as stage

    seen: dict[str, list] = {"student": [], "teacher": []}
    check = stage.check_pair

    def spy(student, teacher, *args):  # every forward records the ids it was given
        for name, model in (("student", student), ("teacher", teacher)):
            model.register_forward_pre_hook(lambda m, a, kw, n=name: seen[n].append(kw["input_ids"]), with_kwargs=True)
        return check(student, teacher, *args)

    monkeypatch.setattr(stage, "check_pair", spy)
    metrics, _ = run(make_cfg(f"student.tokenizer={other_tokenizer}", "loss=kd"))
    out = tmp_path / "run"
    student_tok, teacher_tok = AutoTokenizer.from_pretrained(other_tokenizer), AutoTokenizer.from_pretrained(
        json.loads((out / "report.json").read_text())["models"][0]["path"])
    assert seen["student"] and seen["teacher"]  # training, validation and the report: each model its own ids
    assert all(bool((ids[:, 0] == student_tok.cls_token_id).all()) for ids in seen["student"])
    assert all(bool((ids[:, 0] == teacher_tok.cls_token_id).all()) for ids in seen["teacher"])
    assert student_tok.cls_token_id != teacher_tok.cls_token_id
    assert (out / "checkpoints" / "last.ckpt").is_file()
    report = json.loads((out / "report.json").read_text())
    rows = {r["model"]: r for r in report["models"]}
    assert metrics["student_score"] == rows["student"]["score"]
    # vanilla transformers: the saved student and its own tokenizer load and score what the report says
    tok = AutoTokenizer.from_pretrained(out / "student")
    model = AutoModelForSequenceClassification.from_pretrained(out / "student").eval()
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(other_tokenizer).get_vocab()
    assert model.config.vocab_size == len(tok)
    lines = (glue_dir / "SST-2" / "dev.tsv").read_text().splitlines()[1:]
    texts, labels = zip(*(line.rsplit("\t", 1) for line in lines), strict=True)
    with torch.no_grad():
        logits = model(**tok(list(texts), padding=True, return_tensors="pt")).logits
    accuracy = float((logits.argmax(-1) == torch.tensor([int(y) for y in labels])).double().mean())
    assert accuracy == pytest.approx(rows["student"]["metrics"]["accuracy"])


def test_hidden_state_loss_with_two_tokenizers_stops_before_any_work(make_cfg, tmp_path, other_tokenizer,
                                                                     monkeypatch):
    def no_work(*args, **kwargs):
        raise AssertionError("the teacher was prepared / data tokenized before the refusal")

    monkeypatch.setattr("distill.stages.distill.prepare_teacher", no_work)
    monkeypatch.setattr(GLUEDataModule, "load_split", no_work)
    with pytest.raises(ConfigError) as err:
        run(make_cfg(f"student.tokenizer={other_tokenizer}", "loss=tinybert_intermediate"))
    assert str(err.value) == (
        "loss.terms.hidden needs the teacher's and the student's token sequences aligned, but student.tokenizer "
        "differs from the teacher's; use logit-level losses (kd, ce, ...) or the teacher's tokenizer.")
    assert not (tmp_path / "run" / "student").exists() and not (tmp_path / "run" / "checkpoints").exists()


def test_a_missing_student_tokenizer_is_one_sentence(make_cfg, tmp_path):
    with pytest.raises(ConfigError, match=r"^student.tokenizer='.*nowhere' is not a tokenizer folder or hub id"):
        run(make_cfg(f"student.tokenizer={tmp_path / 'nowhere'}"))


def test_eval_stage_scores_a_student_with_its_own_tokenizer_beside_the_teacher(make_cfg, tmp_path, glue_dir,
                                                                               tiny_teacher, other_tokenizer,
                                                                               monkeypatch):
    """stage=eval with a student whose tokenizer differs: each model reads its own tokens (logits equal vanilla
    transformers fed by each model's own tokenizer)."""
    import distill.report as report_pkg
    from distill.models.student import bert_student

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    saved = tmp_path / "own_student"
    bert_student(teacher, 1, 16, 2, 32, tokenizer=str(other_tokenizer)).save_pretrained(saved)
    AutoTokenizer.from_pretrained(other_tokenizer).save_pretrained(saved)
    seen: list[torch.Tensor] = []
    run_model = report_pkg.run_model
    monkeypatch.setattr(report_pkg, "run_model", lambda m, b: seen.append(torch.cat(run_model(m, b))) or run_model(m, b))
    metrics, _ = run(make_cfg("stage=eval", f"eval.model_path={saved}", f"eval.teacher_path={tiny_teacher}",
                              output="eval"))
    lines = (glue_dir / "SST-2" / "dev.tsv").read_text().splitlines()[1:]
    texts = [line.rsplit("\t", 1)[0] for line in lines]
    expected = []
    for path in (tiny_teacher, saved):  # teacher row first, then the student's
        tok = AutoTokenizer.from_pretrained(path)
        with torch.no_grad():
            model = AutoModelForSequenceClassification.from_pretrained(path).eval()
            expected.append(model(**tok(texts, padding=True, return_tensors="pt")).logits)
    assert len(seen) == 2 and all(torch.equal(a, b) for a, b in zip(seen, expected, strict=True))
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert [r["model"] for r in report["models"]] == ["teacher", "student"] and "student_retention" in metrics
