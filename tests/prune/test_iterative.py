"""Iterative cutting (distill/prune/iterative.py): identity, chained cuts against the plain cut path, vanilla
round-trip, the callback's place in Lightning's fit (optimizer, resume), a skipped cut phase, the recipe end to
end on the tiny fixtures, and bad targets stopping at construction or planning."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForSequenceClassification, BertForSequenceClassification

from distill.errors import ConfigError
from distill.prune.cut import cut_model, resolve_geometry
from distill.prune.importance import estimate_importance
from distill.prune.iterative import CutTo, Geometry, geometry_of, match_cut_geometry

# the same toy BERT, batches, tiny Lightning fit and optimizer probe as the neuron-pruning tests
from .test_neuron import FFN, HEADS, HIDDEN, LAYERS, _fit, _Probe, batches, logits, toy  # noqa: F401


def cut_in_setup(callback: CutTo, model, root, calibration=None):
    """Run the callback's ``setup`` as a fit would: a trainer whose datamodule gives ``calibration``."""
    data = calibration if calibration is not None else batches()
    trainer = SimpleNamespace(datamodule=SimpleNamespace(train_dataloader=lambda: iter(data)), is_global_zero=True,
                              default_root_dir=str(root))
    callback.setup(trainer, SimpleNamespace(student=model), "fit")
    return model


def plain_cut(model, importance="activation", **target):
    """The reference: the one-shot cut path (estimate_importance + cut_model) applied to ``model``."""
    geometry = resolve_geometry(model.config, **target)
    return cut_model(model, geometry, estimate_importance(model, batches(), importance), layers="stride")


def test_a_cut_that_keeps_everything_leaves_the_logits_unchanged(tmp_path, single_thread):
    batch = batches(1, seed=3)[0]
    reference = logits(toy(), batch)
    model = toy()
    params = {id(p) for p in model.parameters()}
    cut_in_setup(CutTo(), model, tmp_path)
    assert torch.equal(logits(model, batch), reference)
    assert geometry_of(model.config) == Geometry(LAYERS, HIDDEN, HEADS, FFN)
    assert params.isdisjoint(id(p) for p in model.parameters())  # the same object now holds the cut tensors


def test_two_chained_cuts_reach_the_target_as_the_plain_path_and_load_in_vanilla_transformers(tmp_path,
                                                                                             single_thread):
    model, rng = toy(), torch.get_rng_state()
    cut_in_setup(CutTo(num_hidden_layers=2, hidden_size=12, num_attention_heads=2, intermediate_size=30,
                       calibration_batches=3), model, tmp_path / "a")
    cut_in_setup(CutTo(num_hidden_layers=1, hidden_size=8, intermediate_size=20, importance="taylor",
                       calibration_batches=3), model, tmp_path / "b")
    assert torch.equal(torch.get_rng_state(), rng)  # the run's random draws do not move
    assert geometry_of(model.config) == Geometry(1, 8, 2, 20)
    layer = model.bert.encoder.layer[0]
    assert len(model.bert.encoder.layer) == 1 and model.bert.embeddings.word_embeddings.weight.shape == (50, 8)
    assert layer.attention.self.query.weight.shape == (8, 8) and layer.attention.self.attention_head_size == 4
    assert layer.intermediate.dense.weight.shape == (20, 8) and model.classifier.weight.shape == (2, 8)
    # the same as cutting by hand with the one-shot path, twice
    reference = plain_cut(plain_cut(toy(), num_hidden_layers=2, hidden_size=12, intermediate_size=30),
                          "taylor", num_hidden_layers=1, hidden_size=8, intermediate_size=20)
    batch = batches(1, seed=5)[0]
    assert torch.equal(logits(model, batch), logits(reference, batch))
    record = json.loads((tmp_path / "b" / "cut_to.json").read_text())
    assert record["geometry_before"]["hidden_size"] == 12 and record["geometry_after"]["intermediate_size"] == 20
    model.save_pretrained(tmp_path / "student")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "student").eval()
    assert type(loaded) is BertForSequenceClassification and geometry_of(loaded.config) == Geometry(1, 8, 2, 20)
    assert torch.equal(logits(loaded, batch), logits(model, batch))


def test_a_skipped_cut_phase_gives_a_fresh_student_its_geometry_before_loading(tmp_path, single_thread):
    """A rerun skips a finished phase that cut the student: its saved weights load into the teacher-sized one."""
    cut = cut_in_setup(CutTo(num_hidden_layers=2, hidden_size=12, intermediate_size=30), toy(), tmp_path)
    fresh, rng = toy(seed=9), torch.get_rng_state()
    match_cut_geometry(fresh, tmp_path).load_state_dict(cut.state_dict())
    assert torch.equal(torch.get_rng_state(), rng)
    batch = batches(1)[0]
    assert torch.equal(logits(fresh.eval(), batch), logits(cut, batch))
    untouched = toy()
    assert match_cut_geometry(untouched, tmp_path / "no-cut") is untouched and untouched.config.hidden_size == HIDDEN


def test_the_optimizer_holds_the_cut_parameters_and_a_resumed_phase_loads_the_cut_shapes(make_cfg, tiny_teacher,
                                                                                        tmp_path, single_thread):
    target = {"num_hidden_layers": 3, "hidden_size": 24, "intermediate_size": 48, "calibration_batches": 1}
    probe = _Probe()
    trainer, student = _fit(make_cfg, tiny_teacher, tmp_path / "fit", [CutTo(**target), probe])
    assert geometry_of(student.config) == Geometry(3, 24, 2, 48)  # from the fixture teacher's 4 / 32 / 2 / 64
    assert probe.optimized == {id(p) for p in student.parameters()}
    changed = [k for k, v in student.state_dict().items() if not torch.equal(v, probe.weights[k])]
    assert any("attention.self.query" in k for k in changed)  # ... and the fit trains them
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    again, resumed = _fit(make_cfg, tiny_teacher, tmp_path / "resumed", [CutTo(**target)],
                          ckpt_path=str(tmp_path / "last.ckpt"), steps=3)
    assert geometry_of(resumed.config) == Geometry(3, 24, 2, 48) and again.global_step == 3


FIXTURE_CUTS = [  # the recipe's two cuts scaled to the fixture teacher (4 / 32 / 2 / 64)
    "phases.half.callbacks.cut_to.num_hidden_layers=3", "phases.half.callbacks.cut_to.hidden_size=24",
    "phases.half.callbacks.cut_to.num_attention_heads=2", "phases.half.callbacks.cut_to.intermediate_size=48",
    "phases.tiny.callbacks.cut_to.num_hidden_layers=2", "phases.tiny.callbacks.cut_to.hidden_size=16",
    "phases.tiny.callbacks.cut_to.num_attention_heads=2", "phases.tiny.callbacks.cut_to.intermediate_size=32",
    "callbacks.cut_to.calibration_batches=2",
]


def test_the_recipe_reaches_tinys_geometry_in_two_cuts_with_the_one_shot_step_count(tmp_path):
    from hydra.core.global_hydra import GlobalHydra

    from tests.conftest import compose_cfg

    cfg = compose_cfg(["experiment=iterative_cut_sst2"], tmp_path / "run")
    GlobalHydra.instance().clear()
    assert cfg.data.max_train_samples == 4000 and cfg.loss.soft._target_ and cfg.student.num_hidden_layers is None
    half, tiny = (cfg.phases[n] for n in ("half", "tiny"))
    assert half.max_epochs + tiny.max_epochs == 3  # 125 + 250 = 375 steps at batch 32, as student=tiny's 3 epochs
    target = {k: tiny.callbacks.cut_to[k] for k in Geometry.__dataclass_fields__}
    assert Geometry(**target) == Geometry(4, 312, 12, 1200)
    first = Geometry(**{k: half.callbacks.cut_to[k] for k in Geometry.__dataclass_fields__})
    assert first.hidden_size % first.num_attention_heads == 0
    assert all(a < b for a, b in zip((4, 312, 1200), (first.num_hidden_layers, first.hidden_size,
                                                      first.intermediate_size)))  # strictly in between ...
    assert all(a < b for a, b in zip((first.num_hidden_layers, first.hidden_size, first.intermediate_size),
                                     (6, 384, 1536)))  # ... the MiniLM-L6 teacher and tiny


@pytest.mark.slow
def test_the_recipe_runs_end_to_end_and_ships_a_vanilla_student(make_cfg, tmp_path, single_thread):
    from distill.train import run

    cfg = make_cfg("experiment=iterative_cut_sst2", "student=pruned", "data.max_train_samples=16", *FIXTURE_CUTS)
    run(cfg)
    phases = tmp_path / "run" / "phases"
    first = json.loads((phases / "1-half" / "cut_to.json").read_text())
    second = json.loads((phases / "2-tiny" / "cut_to.json").read_text())
    assert first["geometry_before"] == asdict_geometry(4, 32, 2, 64)
    assert first["geometry_after"] == second["geometry_before"] == asdict_geometry(3, 24, 2, 48)
    assert second["geometry_after"] == asdict_geometry(2, 16, 2, 32)
    student = AutoModelForSequenceClassification.from_pretrained(tmp_path / "run" / "student")
    assert type(student) is BertForSequenceClassification and geometry_of(student.config) == Geometry(2, 16, 2, 32)
    assert second["params_after"] == sum(p.numel() for p in student.parameters())
    state = torch.load(phases / "2-tiny" / "student.pt", map_location="cpu", weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in student.state_dict().items())  # the phase's weights, shipped
    # killed during phase 2: the rerun skips phase 1 (its cut weights loaded into the teacher-sized student),
    # cuts again in phase 2's setup and restores phase 2's last.ckpt into the cut shapes
    (phases / "2-tiny" / "done.json").unlink()
    (phases / "2-tiny" / "student.pt").unlink()
    assert (phases / "2-tiny" / "checkpoints" / "last.ckpt").is_file()
    run(cfg)
    again = torch.load(phases / "2-tiny" / "student.pt", map_location="cpu", weights_only=True)
    assert again.keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in again.items())


def asdict_geometry(*values: int) -> dict:
    return dict(zip(Geometry.__dataclass_fields__, values))


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"hidden_size": 30, "num_attention_heads": 4},
     "callbacks.cut_to.hidden_size=30 must be divisible by callbacks.cut_to.num_attention_heads=4."),
    ({"hidden_size": 0}, "callbacks.cut_to.hidden_size=0 must be a positive whole number, or null"),
    ({"num_hidden_layers": True}, "callbacks.cut_to.num_hidden_layers=True must be a positive whole number"),
    ({"importance": "magic"}, "callbacks.cut_to.importance='magic' is not one of activation, taylor."),
    ({"layers": "random"}, "callbacks.cut_to.layers='random' is not one of importance, stride."),
    ({"calibration_batches": 0}, "callbacks.cut_to.calibration_batches=0 must be a positive number of batches."),
])
def test_bad_settings_stop_at_construction(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        CutTo(**kwargs)


@pytest.mark.parametrize(("extra", "message"), [
    # wider than the student the phase meets (phase half leaves 24)
    (["phases.tiny.callbacks.cut_to.hidden_size=28", "phases.tiny.callbacks.cut_to.num_attention_heads=4"],
     r"phases\.tiny\.callbacks\.cut_to\.hidden_size=28 must be a whole number from 1 to the student's 24\."),
    (["phases.half.callbacks.cut_to.intermediate_size=65"],
     r"phases\.half\.callbacks\.cut_to\.intermediate_size=65 must be a whole number from 1 to the student's 64\."),
    # hidden not divisible by the heads the student keeps
    (["phases.tiny.callbacks.cut_to.num_attention_heads=null", "phases.tiny.callbacks.cut_to.hidden_size=15"],
     r"phases\.tiny\.callbacks\.cut_to\.hidden_size=15 must be divisible by "
     r"phases\.tiny\.callbacks\.cut_to\.num_attention_heads=2\."),
])
def test_bad_targets_stop_at_planning(make_cfg, tmp_path, extra, message):
    from distill.phases.plan import plan_phases

    cfg = make_cfg("experiment=iterative_cut_sst2", "student=pruned", *FIXTURE_CUTS, *extra)
    with pytest.raises(ConfigError, match=message):
        plan_phases(cfg, tmp_path / "plan")
    assert not (tmp_path / "plan").exists()


def test_a_loss_reading_hidden_states_is_refused_before_the_cut(tmp_path):
    model = toy()
    objective = SimpleNamespace(requires=frozenset({"hidden_states"}), term_names=["soft", "hidden"])
    trainer = SimpleNamespace(datamodule=SimpleNamespace(train_dataloader=lambda: iter(batches())),
                              is_global_zero=True, default_root_dir=str(tmp_path))
    with pytest.raises(ConfigError, match=r"callbacks\.cut_to: cutting the student needs a loss that reads logits"):
        CutTo(hidden_size=8).setup(trainer, SimpleNamespace(student=model, objective=objective), "fit")
    assert model.config.hidden_size == HIDDEN
