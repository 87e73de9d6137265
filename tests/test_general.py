"""General distillation: text collection from GLUE folders and text files, the text data module, stage=general."""

import json

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer

from distill.data.tasks import get_task
from distill.data.text import TextDataModule, collect_texts
from distill.errors import DataError
from distill.models.student import pretrained_student
from distill.models.teacher import load_classifier
from distill.train import run

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture
def small_glue(tmp_path):
    root = tmp_path / "glue"
    files = {
        "SST-2/train.tsv": "sentence\tlabel\ngood movie\t1\n  bad plot \t0\ngood movie\t1\nshared line\t0\n",
        "SST-2/dev.tsv": "sentence\tlabel\ndev only sentence\t1\n",
        "RTE/train.tsv": "index\tsentence1\tsentence2\tlabel\n0\tshared line\ta dog runs\tentailment\n",
        "CoLA/train.tsv": "src\t1\t\tthe cat eats\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_glue_training_sentences_are_collected_once(small_glue):
    texts = collect_texts(small_glue)
    # task order of distill.data.tasks (sst2, cola, mrpc, rte, stsb); both sentences of pair tasks; no dev text
    assert texts == ["good movie", "bad plot", "shared line", "the cat eats", "a dog runs"]


def test_text_files_are_read_and_deduplicated(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text("one\n\ntwo\none\n")
    b.write_text("two\nthree\n")
    assert collect_texts(None, [str(a), str(b)]) == ["one", "two", "three"]


def test_max_samples_is_a_seeded_subset_in_order(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("\n".join(f"line {i}" for i in range(50)))
    full = collect_texts(None, [str(path)])
    sub = collect_texts(None, [str(path)], max_samples=10, seed=3)
    assert len(sub) == 10 and sub == [t for t in full if t in sub]
    assert sub == collect_texts(None, [str(path)], max_samples=10, seed=3)
    assert sub != collect_texts(None, [str(path)], max_samples=10, seed=4)


def test_missing_or_empty_text_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="names .*missing.txt, which is not a file"):
        collect_texts(None, [str(tmp_path / "missing.txt")])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="found no text in data_dir"):
        collect_texts(tmp_path / "empty")


def test_text_batches_pad_and_mask(tiny_teacher):
    tok = AutoTokenizer.from_pretrained(str(tiny_teacher))
    dm = TextDataModule(tok, ["good movie", "a very very long boring film plot"], max_length=6, batch_size=2)
    batch = next(iter(dm.train_dataloader()))
    assert batch["input_ids"].shape == (2, 6) and "mlm_labels" not in batch
    masked = TextDataModule(tok, ["good movie"] * 8, max_length=8, batch_size=8, mask_prob=0.5)
    batch = next(iter(masked.train_dataloader()))
    assert batch["mlm_mask"].dtype == torch.bool and batch["mlm_labels"].shape == batch["input_ids"].shape


def test_general_stage_saves_a_student_that_pretrained_can_load(make_cfg, tmp_path, tiny_teacher):
    metrics, objs = run(make_cfg("stage=general", "experiment=tinybert_sst2", "student=micro",
                                 "phases.general.data.max_samples=16", "phases.general.data.batch_size=8", "logger=none"))
    out = tmp_path / "run" / "general_student"
    assert objs["general_student"] == str(out) and metrics["general_steps"] == 2  # 16 texts / 8 per batch, 1 epoch
    assert AutoConfig.from_pretrained(out).architectures == ["BertModel"]  # the encoder, no random classifier
    assert (out / "tokenizer_config.json").is_file()
    assert json.loads((tmp_path / "run" / "phases" / "1-general" / "done.json").read_text())["global_step"] == 2
    assert not (tmp_path / "run" / "student").exists()  # no task run
    encoder = AutoModel.from_pretrained(out)
    teacher = load_classifier(str(tiny_teacher), get_task("sst2"))
    student = pretrained_student(teacher, str(out))
    assert student.config.hidden_size == 128  # student=micro from the test overrides
    assert torch.equal(student.base_model.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight)
    assert torch.equal(student.base_model.encoder.layer[1].output.dense.weight, encoder.encoder.layer[1].output.dense.weight)


def test_general_stage_without_a_general_phase_is_refused(make_cfg):
    from distill.errors import ConfigError

    with pytest.raises(ConfigError, match="stage=general runs a recipe's general-distillation phase"):
        run(make_cfg("stage=general"))
