"""distill.report.evaluate: metrics equal a hand count and the Lightning validation path; parity pinned."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import make_tiny_bert

from distill.data.tasks import get_task
from distill.report.evaluate import evaluate_classifier, labels_of, parity, run_model, task_metrics


def tiny_bert(num_labels: int = 2, seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=120, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=num_labels)
    return BertForSequenceClassification(config).eval()


def dev_batches(n_batches: int = 3, size: int = 8, seq: int = 12, regression: bool = False):
    g = torch.Generator().manual_seed(0)
    out = []
    for _ in range(n_batches):
        ids = torch.randint(0, 120, (size, seq), generator=g)
        labels = torch.rand(size, generator=g) * 5 if regression else torch.randint(0, 2, (size,), generator=g)
        out.append({"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids),
                    "labels": labels})
    return out


def test_accuracy_matches_a_hand_count():
    model, batches = tiny_bert(), dev_batches()
    metrics = evaluate_classifier(model, batches, get_task("mrpc"))
    assert set(metrics) == {"f1", "accuracy"}
    with torch.no_grad():
        correct = sum(int((model(input_ids=b["input_ids"]).logits.argmax(-1) == b["labels"]).sum()) for b in batches)
    assert metrics["accuracy"] == pytest.approx(correct / 24, abs=1e-7)
    assert 0 < correct < 24  # a model that is neither all right nor all wrong, so the count means something


@pytest.mark.parametrize("task_name", ["mrpc", "stsb"])
def test_metrics_equal_the_lightning_validate_path(task_name, glue_dir, tmp_path):
    """The old ``distill.train.evaluate`` (TaskModule + ``trainer.validate``) on the same batches; STS-B's
    streaming correlations would differ in the last bits with other batching."""
    import lightning as L

    from distill.data.glue import GLUEDataModule
    from distill.module import TaskModule

    task = get_task(task_name)
    model, _ = make_tiny_bert(tmp_path / "model", num_labels=task.num_labels, layers=1, hidden=16)
    model.eval()
    dm = GLUEDataModule(task_name, data_dir=str(glue_dir), source="local", tokenizer=str(tmp_path / "model"),
                        eval_batch_size=6)
    dm.setup("validate")
    loader = dm._loader("dev", False, dm.eval_batch_size)
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    (out,) = trainer.validate(TaskModule(model, task, optimizer=torch.optim.AdamW), dataloaders=loader, verbose=False)
    expected = {k.removeprefix("val/"): float(v) for k, v in out.items() if k != "val/score"}
    assert len(loader) > 1 and set(expected) == set(task.metrics)
    assert evaluate_classifier(model, loader, task) == expected  # exactly, not approximately


def test_parity_of_the_reference_itself_is_exact():
    logits = run_model(tiny_bert(), dev_batches())
    assert parity(logits, logits) == {"max_abs_logit_diff": 0.0, "agreement": 1.0}


def test_parity_pinned_on_hand_made_logits():
    ref = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([[2.0, 1.0]])]
    got = [torch.tensor([[1.0, 0.5], [0.0, 1.0]]), torch.tensor([[0.0, 3.0]])]  # last example flips, |Δ| = 2
    assert parity(got, ref) == {"max_abs_logit_diff": 2.0, "agreement": pytest.approx(2 / 3)}
    assert parity([torch.ones(3, 1)], [torch.zeros(3, 1)]) == {"max_abs_logit_diff": 1.0, "agreement": None}
    with pytest.raises(ValueError, match="same shape"):
        parity([torch.ones(3, 2)], [torch.ones(2, 2)])


def test_parity_of_a_perturbed_copy_is_the_perturbation():
    model, batches = tiny_bert(), dev_batches()
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted.classifier.bias[0] += 0.25  # class-0 logit of every example moves by exactly 0.25
    ref, got = run_model(model, batches), run_model(shifted, batches)
    result = parity(got, ref)
    assert result["max_abs_logit_diff"] == pytest.approx(0.25, abs=1e-6)
    flipped = [(r.argmax(-1) != (r + torch.tensor([0.25, 0.0])).argmax(-1)).sum() for r in ref]
    assert result["agreement"] == pytest.approx(1 - int(sum(flipped)) / 24)


def test_task_metrics_reuse_logits_without_rerunning_the_model():
    batches = dev_batches(regression=True)
    logits = run_model(tiny_bert(num_labels=1), batches)
    labels = labels_of(batches)
    metrics = task_metrics(logits, labels, get_task("stsb"))
    scores, targets = torch.cat(logits).squeeze(-1).double(), torch.cat(labels).double()
    pearson = torch.corrcoef(torch.stack([scores, targets]))[0, 1].item()
    assert metrics["pearson"] == pytest.approx(pearson, abs=1e-5)
    assert task_metrics([], [], get_task("stsb")) == {}
