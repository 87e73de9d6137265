from pathlib import Path

import pytest
import torch
from conftest import SHARED_GLUE, make_tokenizer

from distill.data.glue import GLUEDataModule
from distill.data.tasks import TASKS, get_task
from distill.data.tsv import read_glue_tsv, task_file
from distill.errors import ConfigError, DataError
from distill.metrics import build_metrics, predictions

REAL_ROWS = {"sst2": (67349, 872), "cola": (8551, 1043), "mrpc": (3667, 408), "rte": (2490, 277), "stsb": (5749, 1500)}


@pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason="real GLUE files not present at ../shared/data/glue")
@pytest.mark.parametrize("task", sorted(REAL_ROWS))
def test_real_glue_files_parse_completely(task):
    spec = get_task(task)
    for split, expected in zip(("train", "dev"), REAL_ROWS[task]):
        cols = read_glue_tsv(task_file(SHARED_GLUE, spec, split), spec)
        assert len(cols["label"]) == expected
        assert all(isinstance(t, str) and t for t in cols["text_a"][:100])
        if spec.is_regression:
            assert 0.0 <= min(cols["label"]) and max(cols["label"]) <= 5.0
        else:
            assert set(cols["label"]) == set(range(spec.num_labels))


@pytest.mark.skipif(not SHARED_GLUE.is_dir(), reason="real GLUE files not present at ../shared/data/glue")
def test_real_mrpc_first_row_strips_bom_and_keeps_quotes():
    spec = get_task("mrpc")
    cols = read_glue_tsv(task_file(SHARED_GLUE, spec, "train"), spec)
    assert cols["label"][0] == 1
    assert cols["text_a"][0].startswith('Amrozi accused his brother , whom he called " the witness "')


def test_fixture_layouts_give_expected_labels(glue_dir):
    rte = read_glue_tsv(glue_dir / "RTE" / "train.tsv", get_task("rte"))
    assert rte["label"][:4] == [0, 1, 0, 1] and len(rte["text_b"]) == 40
    cola = read_glue_tsv(glue_dir / "CoLA" / "dev.tsv", get_task("cola"))
    assert cola["label"][:3] == [0, 1, 0] and "text_b" not in cola
    stsb = read_glue_tsv(glue_dir / "STS-B" / "train.tsv", get_task("stsb"))
    assert stsb["label"][:3] == pytest.approx([0.0, 0.8, 1.6])


def test_malformed_row_names_file_and_line(tmp_path):
    (tmp_path / "SST-2").mkdir()
    bad = tmp_path / "SST-2" / "train.tsv"
    bad.write_text("sentence\tlabel\ngood film\t1\nno label column here\n")
    with pytest.raises(DataError, match=r"train\.tsv:3: malformed row"):
        read_glue_tsv(bad, get_task("sst2"))
    bad.write_text("sentence\tlabel\ngood film\tmaybe\n")
    with pytest.raises(DataError, match=r"train\.tsv:2: label 'maybe' is not one of"):
        read_glue_tsv(bad, get_task("sst2"))


def test_missing_folder_and_file(tmp_path):
    with pytest.raises(DataError, match="has no SST-2/ folder"):
        task_file(tmp_path, get_task("sst2"), "train")
    (tmp_path / "SST-2").mkdir()
    with pytest.raises(DataError, match=r"dev\.tsv is missing"):
        task_file(tmp_path, get_task("sst2"), "dev")


def test_unknown_task_lists_allowed():
    with pytest.raises(ValueError, match="allowed: sst2, cola, mrpc, rte, stsb"):
        get_task("mnli2")


def test_datamodule_pads_per_batch_and_caches(glue_dir, tmp_path):
    tok_dir = tmp_path / "tok"
    make_tokenizer(tok_dir).save_pretrained(tok_dir)
    dm = GLUEDataModule("mrpc", data_dir=str(glue_dir), tokenizer=str(tok_dir), batch_size=4,
                        max_train_samples=12, cache_dir=str(tmp_path / "cache"))
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 12 and len(dm.datasets["dev"]) == 20
    batch = next(iter(dm.train_dataloader()))
    longest = int(batch["attention_mask"].sum(1).max())
    assert batch["input_ids"].shape == (4, longest)  # padded to the batch's longest pair, not max_length
    assert batch["labels"].dtype == torch.int64
    assert set(batch["token_type_ids"].unique().tolist()) == {0, 1}
    assert list((tmp_path / "cache" / "tokenized").glob("mrpc-train-*.arrow"))


def test_regression_labels_are_float(glue_dir, tmp_path):
    tok_dir = tmp_path / "tok"
    make_tokenizer(tok_dir).save_pretrained(tok_dir)
    dm = GLUEDataModule("stsb", data_dir=str(glue_dir), tokenizer=str(tok_dir), batch_size=4)
    dm.setup("fit")
    assert next(iter(dm.val_dataloader()))["labels"].dtype == torch.float32
    assert dm.num_labels == 1 and dm.is_regression


@pytest.mark.parametrize("kwargs, key", [({"source": "ftp"}, "data.source"),
                                         ({"max_train_samples": 0}, "data.max_train_samples")])
def test_bad_datamodule_values(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        GLUEDataModule("sst2", data_dir="x", **kwargs)


def test_metrics_hand_computed():
    preds, target = torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 0, 0])
    mrpc = {k: float(v) for k, v in build_metrics(get_task("mrpc"))(preds, target).items()}
    assert mrpc == pytest.approx({"accuracy": 0.75, "f1": 2 / 3})
    cola = build_metrics(get_task("cola"))(preds, target)
    assert float(cola["matthews"]) == pytest.approx(1 / 3**0.5)  # (1·2 − 1·0)/sqrt(2·1·3·2)
    scores = predictions(torch.tensor([[0.0], [1.0], [2.0]]), True)
    stsb = build_metrics(get_task("stsb"))(scores, torch.tensor([0.0, 2.0, 4.0]))
    assert float(stsb["pearson"]) == pytest.approx(1.0, abs=1e-5)
    assert float(stsb["spearman"]) == pytest.approx(1.0, abs=1e-5)


def test_matthews_is_zero_for_a_single_class_predictor_accumulated_over_batches():
    # GLUE / scikit-learn convention; torchmetrics alone gives 0.0256 for CoLA dev's 721 vs 322 split
    metric = build_metrics(get_task("cola"))["matthews"]
    target = torch.tensor([1] * 721 + [0] * 322)
    for chunk in target.split(128):
        metric.update(torch.ones_like(chunk), chunk)
    assert float(metric.compute()) == 0.0
    metric.reset()
    metric.update(torch.tensor([1, 0, 1, 0]), torch.tensor([1, 1, 1, 1]))  # a single target class
    assert float(metric.compute()) == 0.0
    metric.reset()
    metric.update(torch.tensor([1, 1]), torch.tensor([1, 0]))
    metric.update(torch.tensor([0, 0]), torch.tensor([0, 0]))  # the hand-computed case above, in two batches
    assert float(metric.compute()) == pytest.approx(1 / 3**0.5)


def test_every_task_has_a_metric_factory():
    for spec in TASKS.values():
        assert set(build_metrics(spec).keys()) == set(spec.metrics)
        assert spec.main_metric in spec.metrics
        assert Path(spec.folder).name == spec.folder
