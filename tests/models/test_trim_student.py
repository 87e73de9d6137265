"""``student.trim_vocab=true``: the student trains on the teacher's vocabulary trimmed to the task's training set,
beside the teacher's full inputs, and ships trimmed; bad values stop with one sentence before any work."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import SPECIALS, WORDS, compose_cfg, fast_overrides
from hydra.core.global_hydra import GlobalHydra
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from distill.data.glue import GLUEDataModule
from distill.errors import ConfigError
from distill.models.trim_student import TRIM_FILE, trimmed_tokenizer_dir
from distill.train import run

ABSENT = ("dog", "cat", "woman")  # in the teacher's vocabulary, never in the training set below
# dev rows (of 20) that hold absent words, and how many absent words each holds
DEV_OOV = {0: 1, 5: 1, 10: 1, 15: 1, 3: 2}


@pytest.fixture(scope="module")
def trim_glue(tmp_path_factory) -> Path:
    """SST-2 whose training set never uses ``ABSENT``; 5 of the 20 dev sentences do (6 such words in all)."""
    root = tmp_path_factory.mktemp("glue_trim")
    rng = random.Random(1)
    words = [w for w in WORDS if w not in ABSENT]
    sentence = lambda: " ".join(rng.choice(words) for _ in range(6))  # noqa: E731
    train = [f"{sentence()}\t{i % 2}" for i in range(40)]
    extra = {0: "dog", 5: "dog", 10: "cat", 15: "woman", 3: "cat dog"}
    dev = [f"{sentence()} {extra[i]}\t{i % 2}" if i in extra else f"{sentence()}\t{i % 2}" for i in range(20)]
    (root / "SST-2").mkdir()
    for split, lines in (("train", train), ("dev", dev)):
        (root / "SST-2" / f"{split}.tsv").write_text("\n".join(["sentence\tlabel", *lines]) + "\n")
    return root


@pytest.fixture
def trim_cfg(trim_glue, tiny_teacher, tmp_path):
    def factory(*extra: str, output: str = "run"):
        return compose_cfg([*fast_overrides(trim_glue, tiny_teacher, tmp_path / "cache"), *extra], tmp_path / output)

    yield factory
    GlobalHydra.instance().clear()


def _rows(glue: Path, split: str) -> tuple[list[str], list[int]]:
    lines = (glue / "SST-2" / f"{split}.tsv").read_text().splitlines()[1:]
    texts, labels = zip(*(line.rsplit("\t", 1) for line in lines), strict=True)
    return list(texts), [int(y) for y in labels]


def _expected_kept(teacher_tok, train_texts: list[str]) -> list[int]:
    """The plain reference: every teacher id of the training sentences' pieces, plus the special tokens."""
    ids = {i for text in train_texts for i in teacher_tok(text, add_special_tokens=False)["input_ids"]}
    return sorted(ids | {teacher_tok.convert_tokens_to_ids(t) for t in SPECIALS})


@pytest.mark.slow
def test_trimmed_student_trains_ships_and_scores_what_the_report_says(trim_cfg, trim_glue, tiny_teacher, tmp_path,
                                                                      monkeypatch):
    """A tiny run with student.trim_vocab=true and DistilBERT's loss (soft KL + CE + cosine of hidden states)."""
    import distill.report as report_pkg
    from distill.module import DistillationModule

    teacher_tok = AutoTokenizer.from_pretrained(tiny_teacher)
    train_texts, _ = _rows(trim_glue, "train")
    kept = _expected_kept(teacher_tok, train_texts)
    assert len(kept) < len(teacher_tok)
    remap = torch.full((len(teacher_tok),), -1, dtype=torch.long)
    remap[kept] = torch.arange(len(kept))

    batches: list[dict] = []
    reported: dict[str, list] = {}
    step, report_run_model = DistillationModule.training_step, report_pkg.run_model

    def spy_step(module, batch, batch_idx):
        batches.append(batch)
        return step(module, batch, batch_idx)

    def spy_report(model, data):
        logits = report_run_model(model, data)
        reported.setdefault("logits", []).append(logits)
        return logits

    monkeypatch.setattr(DistillationModule, "training_step", spy_step)
    monkeypatch.setattr(report_pkg, "run_model", spy_report)
    metrics, _ = run(trim_cfg("student.trim_vocab=true", "loss=distilbert"))

    # training batches: the teacher read its full ids, the student the very same pieces as trimmed ids
    assert batches
    for b in batches:
        assert b["input_ids"].shape == b["student_input_ids"].shape
        assert torch.equal(b["attention_mask"], b["student_attention_mask"])
        assert torch.equal(remap[b["input_ids"]], b["student_input_ids"])
    # the shipped student: trimmed table and tokenizer, loaded by vanilla transformers
    out = tmp_path / "run"
    tok = AutoTokenizer.from_pretrained(out / "student")
    model = AutoModelForSequenceClassification.from_pretrained(out / "student").eval()
    inv = {i: p for p, i in teacher_tok.get_vocab().items()}
    assert tok.get_vocab() == {inv[old]: new for new, old in enumerate(kept)}
    assert model.config.vocab_size == model.get_input_embeddings().num_embeddings == len(kept) == len(tok)
    # its logits over the dev set (the report's single batch) equal the report's; in-vocabulary rows carry no [UNK]
    dev_texts, labels = _rows(trim_glue, "dev")
    report = json.loads((out / "report.json").read_text())
    rows = {r["model"]: r for r in report["models"]}
    _, student_logits = reported["logits"]  # teacher, student
    enc = tok(dev_texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**enc).logits  # (20, 2)
    in_vocab = [i for i in range(len(dev_texts)) if i not in DEV_OOV]
    assert not bool((enc["input_ids"][in_vocab] == tok.unk_token_id).any())
    assert torch.equal(logits, torch.cat(student_logits))  # one batch of 20, padded alike: bit for bit
    accuracy = float((logits.argmax(-1) == torch.tensor(labels)).double().mean())
    assert accuracy == pytest.approx(rows["student"]["metrics"]["accuracy"]) == pytest.approx(metrics["student_score"])
    # the report states how much of the dev split the trimmed vocabulary maps to [UNK] (hand-counted above)
    trim = rows["student"]["notes"]["vocab_trim"]
    assert (trim["examples"], trim["unk_examples_after"], trim["unk_tokens_after"]) == (20, 5, 6)
    assert (trim["vocab_size"], trim["teacher_vocab_size"], trim["unk_tokens_before"]) == (len(kept), len(teacher_tok), 0)
    assert "vocab_trim" not in rows["teacher"]["notes"]
    # the same run without trimming: the same training (batches, dropout draws, updates), so its student trimmed
    # afterwards is this one: unused rows get no gradient, and trimming draws no random numbers
    run(trim_cfg("loss=distilbert", output="plain"))
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "plain" / "student").state_dict()
    trimmed = model.state_dict()
    word = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(trimmed[word], plain[word][kept])
    assert set(trimmed) == set(plain) and all(torch.equal(trimmed[k], plain[k]) for k in plain if k != word)
    assert (f"`student` reads the teacher's vocabulary trimmed to the task's training set ({len(kept)} of "
            f"{len(teacher_tok)} word pieces): 5 of 20 dev examples use a dropped piece (6 of {trim['tokens']} word "
            "pieces); re-split into kept pieces, 5 examples (6 word pieces) still hold a piece mapped to [UNK] (the "
            "teacher's own tokenizer gives 0 [UNK] pieces).") in (out / "report.md").read_text()


def test_trimmed_student_equals_the_untrimmed_one_on_kept_pieces(trim_glue, tiny_teacher, tmp_path):
    """The builder keeps exactly the rows of the kept ids: the same logits as the untrimmed student."""
    from distill.models.student import bert_student

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    train_texts, _ = _rows(trim_glue, "train")
    folder = trimmed_tokenizer_dir(str(tiny_teacher), train_texts, tmp_path / "cache", "sst2")
    geometry = dict(num_hidden_layers=2, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                    init_embeddings="teacher_pca")
    torch.manual_seed(3)
    plain = bert_student(teacher, **geometry).eval()
    torch.manual_seed(3)
    trimmed = bert_student(teacher, **geometry, tokenizer=str(folder), trim_vocab=True).eval()
    kept = json.loads((folder / TRIM_FILE).read_text())["kept_ids"]
    assert torch.equal(trimmed.get_input_embeddings().weight, plain.get_input_embeddings().weight[kept])
    texts = train_texts[:8]
    teacher_tok, tok = AutoTokenizer.from_pretrained(tiny_teacher), AutoTokenizer.from_pretrained(folder)
    with torch.no_grad():
        a = plain(**teacher_tok(texts, padding=True, return_tensors="pt")).logits
        b = trimmed(**tok(texts, padding=True, return_tensors="pt")).logits
    assert torch.equal(a, b)


def test_trimmed_tokenizer_is_cached_by_tokenizer_and_corpus(trim_glue, tiny_teacher, tmp_path):
    train_texts, _ = _rows(trim_glue, "train")
    first = trimmed_tokenizer_dir(str(tiny_teacher), train_texts, tmp_path, "sst2")
    stamp = (first / TRIM_FILE).stat().st_mtime_ns
    assert trimmed_tokenizer_dir(str(tiny_teacher), list(train_texts), tmp_path, "sst2") == first
    assert (first / TRIM_FILE).stat().st_mtime_ns == stamp  # reused, not rewritten
    other = trimmed_tokenizer_dir(str(tiny_teacher), train_texts[:5], tmp_path, "sst2")
    assert other != first
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.mark.parametrize("overrides, message", [
    (["student.trim_vocab=maybe"], "student.trim_vocab='maybe' must be true or false."),
    (["student.trim_vocab=1"], "student.trim_vocab=1 must be true or false."),
    (["student.trim_vocab=true", "student.tokenizer={teacher}"],
     "student.trim_vocab=true makes the student's tokenizer itself (the teacher's, trimmed to the task's training "
     "set), so it cannot be combined with student.tokenizer='{teacher}'; set only one of them."),
    (["student.trim_vocab=true", "augment.enabled=true"],
     "augment.enabled=true swaps the teacher's word pieces, but student.trim_vocab=true gives the student another "
     "vocabulary; turn augmentation off or set student.trim_vocab=false."),
])
def test_bad_trim_settings_stop_before_any_work(trim_cfg, tiny_teacher, tmp_path, monkeypatch, overrides, message):
    def no_work(*args, **kwargs):
        raise AssertionError("the teacher was prepared / data tokenized before the refusal")

    monkeypatch.setattr("distill.stages.distill.prepare_teacher", no_work)
    monkeypatch.setattr(GLUEDataModule, "load_split", no_work)
    with pytest.raises(ConfigError) as err:
        run(trim_cfg(*(o.format(teacher=tiny_teacher) for o in overrides)))
    assert str(err.value) == message.format(teacher=tiny_teacher)
    assert not (tmp_path / "run" / "student").exists()


def test_albert_student_trims_its_factorized_table_exactly(trim_glue, tiny_teacher, tmp_path):
    from distill.models.albert import albert_student

    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_teacher)
    train_texts, _ = _rows(trim_glue, "train")
    folder = trimmed_tokenizer_dir(str(tiny_teacher), train_texts, tmp_path / "cache", "sst2")
    geometry = dict(embedding_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=32, init_embeddings="teacher_pca")
    torch.manual_seed(4)
    plain = albert_student(teacher, **geometry).eval()
    torch.manual_seed(4)
    trimmed = albert_student(teacher, **geometry, tokenizer=str(folder), trim_vocab=True).eval()
    kept = json.loads((folder / TRIM_FILE).read_text())["kept_ids"]
    assert trimmed.get_input_embeddings().weight.shape == (len(kept), 8)
    trimmed.save_pretrained(tmp_path / "albert")
    AutoTokenizer.from_pretrained(folder).save_pretrained(tmp_path / "albert")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "albert").eval()
    tok, teacher_tok = AutoTokenizer.from_pretrained(tmp_path / "albert"), AutoTokenizer.from_pretrained(tiny_teacher)
    with torch.no_grad():
        a = plain(**teacher_tok(train_texts[:8], padding=True, return_tensors="pt")).logits
        b = loaded(**tok(train_texts[:8], padding=True, return_tensors="pt")).logits
    assert type(loaded).__name__ == "AlbertForSequenceClassification" and torch.equal(a, b)
