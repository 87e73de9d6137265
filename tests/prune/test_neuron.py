"""Neuron pruning of a trained student: known-answer ranking, exact targets, identity, vanilla round-trip,
the callback's place in Lightning's fit (optimizer and resume see the pruned shapes) and bad targets."""

from __future__ import annotations

import json
from functools import partial

import lightning as L
import pytest
import torch
from transformers import (
    AlbertConfig,
    AlbertForSequenceClassification,
    AutoModelForSequenceClassification,
    BertConfig,
    BertForSequenceClassification,
)

from distill.errors import ConfigError
from distill.prune.neuron import (
    FFNTarget,
    NeuronPruning,
    count_parameters,
    match_ffn_widths,
    neuron_cost,
    prune_ffn,
    slice_ffn,
)

LAYERS, HIDDEN, HEADS, FFN = 3, 16, 2, 40


def toy(seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=50, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                        intermediate_size=FFN, max_position_embeddings=32, num_labels=2)
    return BertForSequenceClassification(config).eval()


def batches(n: int = 3, seed: int = 1) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        mask = torch.ones(4, 12, dtype=torch.long)
        mask[:2, 9:] = 0  # padded tokens must not count
        out.append({"input_ids": torch.randint(5, 50, (4, 12), generator=g), "attention_mask": mask,
                    "labels": torch.randint(0, 2, (4,), generator=g)})
    return out


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def kill(model, dead: list[list[int]]) -> None:
    """Neurons ``dead[i]`` of layer ``i`` always output GELU(0) = 0: zero rows of ``intermediate.dense``."""
    with torch.no_grad():
        for layer, rows in zip(model.bert.encoder.layer, dead, strict=True):
            layer.intermediate.dense.weight[rows] = 0
            layer.intermediate.dense.bias[rows] = 0


@pytest.mark.parametrize("importance", ["activation", "taylor"])
def test_the_ranking_removes_exactly_the_dead_neurons(importance):
    model = toy()
    dead = [list(range(0, 40, 4)), list(range(3, 40, 4)), [1, 5, 7, 11, 13, 17, 19, 23, 29, 31]]
    kill(model, dead)
    batch = batches(1, seed=7)[0]
    before = logits(model, batch)
    summary = prune_ffn(model, batches(), FFNTarget(neurons=0.25), importance=importance)
    for i, kept in enumerate(summary["kept"]):
        assert kept == [j for j in range(FFN) if j not in dead[i]]
    # the removed neurons contributed nothing, so the smaller model computes the same function
    torch.testing.assert_close(logits(model, batch), before, rtol=0, atol=1e-6)


def test_a_fraction_reaches_its_width_in_every_layer_and_leaves_the_heads():
    model = toy()
    before, cost = count_parameters(model), neuron_cost(list(model.bert.encoder.layer))
    summary = prune_ffn(model, batches(), FFNTarget(neurons=0.25))
    assert model.config.intermediate_size == 30 and summary["width_after"] == 30
    for layer in model.bert.encoder.layer:
        assert (layer.intermediate.dense.out_features, layer.output.dense.in_features) == (30, 30)
        assert tuple(layer.intermediate.dense.weight.shape) == (30, HIDDEN)
        assert tuple(layer.output.dense.weight.shape) == (HIDDEN, 30)
        assert layer.attention.self.query.out_features == HIDDEN  # all heads stay
    assert count_parameters(model) == before - 10 * cost == summary["params_after"]
    assert model.config.num_attention_heads == HEADS


def test_a_parameter_budget_gets_the_widest_ffn_that_fits():
    model = toy()
    before, cost = count_parameters(model), neuron_cost(list(model.bert.encoder.layer))
    budget = before - 7 * cost - 5  # 7 neurons per layer are not enough: the 8th goes too
    prune_ffn(model, batches(), FFNTarget(params=budget))
    assert model.config.intermediate_size == FFN - 8
    assert count_parameters(model) <= budget < count_parameters(model) + cost
    untouched = toy()
    assert prune_ffn(untouched, batches(), FFNTarget(params=before))["width_after"] == FFN  # already within


def test_keeping_everything_reproduces_the_logits_exactly():
    batch = batches(1, seed=3)[0]
    reference = logits(toy(), batch)
    model = toy()
    prune_ffn(model, batches(), FFNTarget(neurons=0.0))
    assert torch.equal(logits(model, batch), reference)
    sliced = slice_ffn(toy(), [torch.arange(FFN)] * LAYERS)  # the slicing path itself, every index kept
    assert torch.equal(logits(sliced, batch), reference)


def test_the_pruned_model_round_trips_through_vanilla_transformers(tmp_path):
    model = toy()
    prune_ffn(model, batches(), FFNTarget(neurons=0.5), importance="taylor")
    model.save_pretrained(tmp_path / "pruned")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "pruned").eval()
    assert type(loaded) is BertForSequenceClassification and loaded.config.intermediate_size == 20
    batch = batches(1, seed=5)[0]
    assert torch.equal(logits(loaded, batch), logits(model, batch))


def test_a_pruned_state_dict_loads_into_an_unpruned_student():
    """A rerun that skips a finished pruned phase loads its state into a student built at full width."""
    pruned = toy()
    prune_ffn(pruned, batches(), FFNTarget(neurons=0.5))
    fresh = match_ffn_widths(toy(seed=9), pruned.state_dict())
    fresh.load_state_dict(pruned.state_dict())
    batch = batches(1)[0]
    assert fresh.config.intermediate_size == 20 and torch.equal(logits(fresh, batch), logits(pruned, batch))


class _Probe(L.Callback):
    """Records, once training starts, which tensors the optimizer updates and the pruned weights."""

    def on_train_start(self, trainer, pl_module):
        self.optimized = {id(p) for g in trainer.optimizers[0].param_groups for p in g["params"]}
        self.weights = {k: v.detach().clone() for k, v in pl_module.student.state_dict().items()}


def _fit(make_cfg, tiny_teacher, root, callbacks, ckpt_path=None, steps=2):
    from distill.blocks import build_datamodule
    from distill.data.tasks import get_task
    from distill.models.teacher import load_classifier
    from distill.module import TaskModule

    dm = build_datamodule(make_cfg(), str(tiny_teacher))
    student = load_classifier(str(tiny_teacher), get_task("sst2"))
    module = TaskModule(student, get_task("sst2"), optimizer=partial(torch.optim.AdamW, lr=1e-2))
    trainer = L.Trainer(max_steps=steps, callbacks=callbacks, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, limit_val_batches=0, accelerator="cpu", enable_model_summary=False,
                        default_root_dir=str(root))
    trainer.fit(module, dm, ckpt_path=ckpt_path)
    return trainer, student


def test_the_callback_prunes_before_the_optimizer_and_the_checkpoint_restore(make_cfg, tiny_teacher, tmp_path,
                                                                             single_thread):
    probe = _Probe()
    pruning = NeuronPruning(neurons=0.5, calibration_batches=1)
    trainer, student = _fit(make_cfg, tiny_teacher, tmp_path / "fit", [pruning, probe])
    assert student.config.intermediate_size == 32  # 64 -> 32 in each of the 4 layers
    assert all(layer.intermediate.dense.out_features == 32 for layer in student.bert.encoder.layer)
    assert probe.optimized == {id(p) for p in student.parameters()}  # the optimizer holds the pruned tensors
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, probe.weights[k])]
    assert any("intermediate.dense" in k for k in changed)  # ... and the recovery trains them
    assert json.loads((tmp_path / "fit" / "neuron_pruning.json").read_text())["width_after"] == 32
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    # a resumed recovery: a fresh full-width student, pruned at setup, then the checkpoint restored into it
    again, resumed = _fit(make_cfg, tiny_teacher, tmp_path / "resumed",
                          [NeuronPruning(neurons=0.5, calibration_batches=1)], ckpt_path=str(tmp_path / "last.ckpt"),
                          steps=3)
    assert resumed.config.intermediate_size == 32 and again.global_step == 3  # restored at step 2, one more step


def test_the_recipe_prunes_in_its_recovery_phase_only(make_cfg, tmp_path, single_thread):
    from distill.train import run

    cfg = make_cfg("experiment=neuron_prune_sst2", "student=distil", "data.max_train_samples=32",
                   "phases.distill.max_epochs=1", "phases.recover.max_epochs=1",
                   "callbacks.neuron_pruning.calibration_batches=1")
    run(cfg)
    phases = tmp_path / "run" / "phases"
    assert not (phases / "1-distill" / "neuron_pruning.json").exists()
    record = json.loads((phases / "2-recover" / "neuron_pruning.json").read_text())
    assert (record["width_before"], record["width_after"], record["layers"]) == (64, 32, 2)
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "student")
    assert student.config.intermediate_size == 32 and record["params_after"] == count_parameters(student)
    # the report's student_before_pruning row: phase 1's student, saved just before the neurons went
    before = AutoModelForSequenceClassification.from_pretrained(phases / "2-recover" / "before_pruning")
    assert before.config.intermediate_size == 64 and count_parameters(before) == record["params_before"]
    rows = {r["model"]: r for r in json.loads((tmp_path / "run" / "report.json").read_text())["models"]}
    assert list(rows) == ["teacher", "student", "student_before_pruning"]
    row = rows["student_before_pruning"]
    assert (row["parameters"], row["geometry"]) == (record["params_before"], "L2 H32 A2 F64")
    assert rows["student"]["geometry"] == "L2 H32 A2 F32" and row["path"] == str(phases / "2-recover" / "before_pruning")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"neurons": 1.0}, "callbacks.neuron_pruning.neurons=1.0 must be a fraction in [0, 1) of each layer's FFN neurons."),
    ({"neurons": -0.1}, "callbacks.neuron_pruning.neurons=-0.1 must be a fraction in [0, 1)"),
    ({"neurons": True}, "callbacks.neuron_pruning.neurons=True must be a fraction"),
    ({"neurons": None, "params": 0}, "callbacks.neuron_pruning.params=0 must be a positive whole number"),
    ({"neurons": None}, "callbacks.neuron_pruning: set exactly one of neurons"),
    ({"params": 1000}, "callbacks.neuron_pruning: set exactly one of neurons"),
    ({"importance": "magic"}, "callbacks.neuron_pruning.importance='magic' is not one of activation, taylor."),
    ({"calibration_batches": 0}, "callbacks.neuron_pruning.calibration_batches=0 must be a positive number"),
])
def test_bad_settings_stop_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)").replace("(", r"\(")):
        NeuronPruning(**kwargs)


def test_targets_the_model_cannot_meet_stop_before_any_batch():
    model = toy()
    floor = count_parameters(model) - (FFN - 1) * neuron_cost(list(model.bert.encoder.layer))
    with pytest.raises(ConfigError, match=rf"params=1000 is below the {floor} parameters .* use at least {floor}\."):
        NeuronPruning(neurons=None, params=1000).check_student(model)
    with pytest.raises(ConfigError, match=r"neurons=0.99 removes all 40 FFN neurons of each layer; use a fraction "
                                          r"below 0\.9875\."):
        NeuronPruning(neurons=0.99).check_student(model)
    with torch.device("meta"):  # the checks need no weights: a planner can run them on a meta student
        meta = toy()
    assert NeuronPruning(neurons=0.5).check_student(meta) == 20
    albert = AlbertForSequenceClassification(AlbertConfig(vocab_size=50, embedding_size=8, hidden_size=16,
                                                          num_attention_heads=2, intermediate_size=32))
    with pytest.raises(ConfigError, match="callbacks.neuron_pruning: neuron pruning needs a BERT-layout student"):
        NeuronPruning().check_student(albert)
    with pytest.raises(ConfigError, match="callbacks.neuron_pruning.calibration_batches: no calibration batches"):
        prune_ffn(toy(), [], FFNTarget(neurons=0.5))
