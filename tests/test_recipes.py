"""conf/experiment/ recipes end to end on tiny models, multi-phase resume, and recipe mistakes caught early."""

import json
from pathlib import Path

import pytest
import torch
from conftest import CONF, make_tiny_bert
from omegaconf import OmegaConf

from distill.errors import ConfigError
from distill.phases import adopt_previous_run, model_configs, phase_config, phase_objective, plan_phases
from distill.phases import fit as phases_mod
from distill.train import run

pytestmark = pytest.mark.usefixtures("single_thread")

SHRINK = ["data.max_train_samples=16", "logger=none"]
GENERAL = ["phases.general.data.max_samples=24"]
RECIPES = {
    "distilbert_sst2": ["student=distil"],
    "tinybert_sst2": [*GENERAL, "phases.intermediate.max_epochs=1"],
    "minilm_sst2": ["phases.attention.max_epochs=1", "phases.prediction.max_epochs=1"],
    "tinybert_aug_sst2": [*GENERAL, "phases.intermediate.max_epochs=1", "augment.copies=2"],
    "mlm_distill": [*GENERAL, "student=distil"],
    "mobilebert_sst2": ["student=mobilebert_tiny", "student.embedding_size=16", "student.intra_bottleneck_size=16",
                        "student.intermediate_size=32", "~phases.layer5", "~phases.layer6"],
    "neuron_prune_sst2": ["student=distil", "phases.distill.max_epochs=1", "phases.recover.max_epochs=1",
                          "callbacks.neuron_pruning.calibration_batches=1"],
    # STS-B (a 1-output tiny teacher, below); a cut student, as the recipe's tiny is
    "cut_aug_stsb": ["student=pruned",
                     "student.num_hidden_layers=2", "student.hidden_size=16", "student.num_attention_heads=2",
                     "student.intermediate_size=32", "student.cut.calibration_batches=1", "trainer.max_epochs=1"],
    "magnitude_sst2": ["student=pruned", "student.num_hidden_layers=2", "student.hidden_size=16",
                       "student.num_attention_heads=2", "student.intermediate_size=32",
                       "student.cut.calibration_batches=1"],
    "iterative_cut_sst2": ["student=pruned", "callbacks.cut_to.calibration_batches=1",
                           *(f"phases.{p}.callbacks.cut_to.{k}={v}" for p, geometry in (("half", (3, 24, 2, 48)),
                                                                                        ("tiny", (2, 16, 2, 32)))
                             for k, v in zip(("num_hidden_layers", "hidden_size", "num_attention_heads",
                                              "intermediate_size"), geometry))],
}


def test_every_recipe_has_a_smoke_run():
    assert set(RECIPES) == {p.stem for p in (CONF / "experiment").glob("*.yaml")}


@pytest.fixture(scope="module")
def regression_teacher(tmp_path_factory) -> Path:
    """A tiny BERT with one output, as a teacher fine-tuned on STS-B has."""
    path = tmp_path_factory.mktemp("regression_teacher")
    make_tiny_bert(path, num_labels=1, layers=4, hidden=32, heads=2)
    return path


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_runs_end_to_end(make_cfg, tmp_path, tiny_mlm_teacher, regression_teacher, name):
    teachers = {"mlm_distill": tiny_mlm_teacher, "cut_aug_stsb": regression_teacher}
    extra = [f"teacher.name_or_path={teachers[name]}"] if name in teachers else []
    cfg = make_cfg(f"experiment={name}", *SHRINK, *RECIPES[name], *extra)
    metrics, _ = run(cfg)
    out = tmp_path / "run"
    assert (out / "report.json").is_file() and (out / "student" / "config.json").is_file()
    assert 0.0 <= metrics["student_score"] <= 1.0
    names = sorted(cfg.phases or {}, key=lambda n: cfg.phases[n].order)
    for i, name in enumerate(names):
        done = json.loads((out / "phases" / f"{i + 1}-{name}" / "done.json").read_text())
        assert done["name"] == name and done["global_step"] > 0
    if "general" in names:
        (cached,) = (tmp_path / "cache" / "phases").iterdir()
        assert cached.name.startswith("general-") and (cached / "done.json").is_file()
        assert (cached / "student" / "config.json").is_file() and (cached / "student" / "tokenizer_config.json").is_file()
    if cfg.augment.enabled:
        assert len(list((tmp_path / "cache" / "augmented").iterdir())) == 1


def test_general_student_is_cached_and_reused(make_cfg, tmp_path, caplog):
    args = ["experiment=tinybert_sst2", *SHRINK, *GENERAL, "phases.intermediate.max_epochs=1", "callbacks=none"]
    cache = tmp_path / "cache" / "phases"
    run(make_cfg(*args, output="first"))
    (cached,) = cache.iterdir()
    stamp = (cached / "student" / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="distill"):
        run(make_cfg(*args, output="second"))
    assert f"Phase 1/3 general: reusing the result cached at {cached}" in caplog.text
    assert not (tmp_path / "second" / "phases" / "1-general").exists()
    assert (cached / "student" / "model.safetensors").stat().st_mtime_ns == stamp
    run(make_cfg(*args, "phases.general.data.max_samples=20", output="third"))  # other texts, other cache entry
    assert len(list(cache.iterdir())) == 2
    # another task seed starts from the same general student when phases.general.seed pins it ...
    run(make_cfg(*args, "seed=1", "phases.general.seed=42", output="fourth"))
    assert not (tmp_path / "fourth" / "phases" / "1-general").exists()
    assert len(list(cache.iterdir())) == 2
    # ... and, unset, the general seed follows the run's: a new general student
    run(make_cfg(*args, "seed=1", output="fifth"))
    assert (tmp_path / "fifth" / "phases" / "1-general" / "done.json").is_file()
    assert len(list(cache.iterdir())) == 3
    # the task runs' learning rate leaves the general student alone when the phase keeps its own
    run(make_cfg(*args, "optimizer.lr=3e-4", "+phases.general.optimizer.lr=1e-4", output="sixth"))
    assert not (tmp_path / "sixth" / "phases" / "1-general").exists()
    run(make_cfg(*args, "optimizer.lr=3e-4", output="seventh"))  # unset: the run's 3e-4, a new entry
    assert len(list(cache.iterdir())) == 4


def test_each_phase_config_comes_from_its_node_and_the_run_config_is_unchanged(make_cfg, tmp_path):
    cfg = make_cfg("experiment=tinybert_sst2", "optimizer.lr=3e-4", "+phases.general.optimizer.lr=5e-5",
                   "phases.prediction.max_epochs=5", "phases.prediction.loss.temperature=4")
    before = OmegaConf.to_yaml(cfg)
    general, inter, pred = plan_phases(cfg, tmp_path)
    assert [p.name for p in (general, inter, pred)] == ["general", "intermediate", "prediction"]
    assert general.cfg.optimizer.lr == 5e-5 and inter.cfg.optimizer.lr == 3e-4 == cfg.optimizer.lr
    assert pred.cfg.trainer.max_epochs == 5 and inter.cfg.trainer.max_epochs == 2
    assert phase_config(cfg, "prediction", tmp_path).loss.temperature == 4
    assert phase_objective(pred, *model_configs(cfg.student, str(cfg.teacher.name_or_path))).temperature(0, 1) == 4
    assert general.own_models and not pred.own_models and pred.final and not inter.final
    assert pred.cfg.paths.output_dir == str(tmp_path / "phases" / "3-prediction")
    assert OmegaConf.to_yaml(cfg) == before


def test_a_command_line_loss_override_reaches_a_phase_that_uses_the_run_loss(make_cfg, tmp_path):
    cfg = make_cfg("experiment=minilm_sst2", "loss.temperature=4", "loss.alpha=0.25")
    attention, prediction = plan_phases(cfg, tmp_path)
    objective = phase_objective(prediction, *model_configs(cfg.student, str(cfg.teacher.name_or_path)))
    assert objective.temperature(0, 1) == 4 and objective.alpha(0, 1) == 0.25
    assert set(phase_config(cfg, "attention", tmp_path).loss.terms) == {"attention", "value"}


def test_finished_phase_is_skipped_on_resume(make_cfg, tmp_path, caplog, monkeypatch):
    args = ["experiment=minilm_sst2", *SHRINK, "phases.attention.max_epochs=1", "phases.prediction.max_epochs=1"]
    run(make_cfg(*args))
    first, second = tmp_path / "run" / "phases" / "1-attention", tmp_path / "run" / "phases" / "2-prediction"
    stamps = {p: p.stat().st_mtime_ns for p in (first / "student.pt", first / "checkpoints" / "last.ckpt")}
    # as if killed during phase 2: its marker and the report are gone, its last.ckpt is there
    for path in (second / "done.json", second / "student.pt", tmp_path / "run" / "report.json"):
        path.unlink()
    seen = {}
    real_fit = phases_mod.fit_phase

    def spy(phase, objective, student, *rest, **kw):
        seen[phase.name] = {k: v.clone() for k, v in student.state_dict().items()}
        return real_fit(phase, objective, student, *rest, **kw)

    monkeypatch.setattr(phases_mod, "fit_phase", spy)
    with caplog.at_level("INFO", logger="distill"):
        run(make_cfg(*args))
    assert "Phase 1/2 attention already finished; skipped" in caplog.text
    assert f"Resuming from {second / 'checkpoints' / 'last.ckpt'}" in caplog.text
    assert list(seen) == ["prediction"]  # phase 1 was not fitted again ...
    handed_on = torch.load(first / "student.pt", weights_only=True)
    assert all(torch.equal(seen["prediction"][k], v) for k, v in handed_on.items())  # ... its weights carried on
    assert all(p.stat().st_mtime_ns == s for p, s in stamps.items())
    assert (second / "done.json").is_file() and (tmp_path / "run" / "report.json").is_file()


def test_fresh_run_folder_adopts_unfinished_identical_run(tmp_path, make_cfg):
    cfg = make_cfg("experiment=minilm_sst2")
    runs = tmp_path / "runs"
    old, new, other, edited = runs / "old", runs / "new", runs / "other", runs / "edited"
    for run_dir, overrides, config in ((old, "- a=1\n", "b: 1\n"), (new, "- a=1\n", "b: 1\n"),
                                       (other, "- a=2\n", "b: 1\n"), (edited, "- a=1\n", "b: 2\n")):
        (run_dir / ".hydra").mkdir(parents=True)
        (run_dir / ".hydra" / "overrides.yaml").write_text(overrides)
        (run_dir / ".hydra" / "config.yaml").write_text(config)
    (old / "phases" / "1-attention").mkdir(parents=True)
    (old / "phases" / "1-attention" / "done.json").write_text("{}")
    (other / "phases" / "1-attention").mkdir(parents=True)
    adopt_previous_run(cfg, edited)  # same command, but a preset's content changed: a fresh run
    assert not (edited / "phases").exists()
    adopt_previous_run(cfg, new)
    assert (new / "phases" / "1-attention" / "done.json").is_file()
    adopt_previous_run(cfg, other)  # different overrides: nothing to adopt, its own progress kept
    assert not (other / "phases" / "1-attention" / "done.json").exists()


def test_a_phase_loss_preset_can_be_added_from_the_command_line(make_cfg, tmp_path):
    cfg = make_cfg("+phases={inter:{order:1,max_epochs:3},pred:{order:2,optimizer:{lr:0.5}}}",
                   "+loss@phases.inter.loss=tinybert_intermediate", "+loss@phases.pred.loss=kd")
    inter, pred = plan_phases(cfg, tmp_path)
    assert set(inter.cfg.loss.terms) == {"hidden", "attention"} and pred.cfg.loss.soft is not None
    assert inter.cfg.trainer.max_epochs == 3 and inter.out_dir == tmp_path / "phases" / "1-inter"
    assert pred.cfg.optimizer.lr == 0.5 and pred.cfg.trainer.max_epochs == cfg.trainer.max_epochs
    assert pred.cfg.paths.output_dir == str(tmp_path / "phases" / "2-pred") and pred.final


MISTAKES = [
    (["experiment=tinybert_sst2", "phases.intermediate.loss.terms.hidden.layer_map.strategy=explicit",
      "+phases.intermediate.loss.terms.hidden.layer_map.pairs=[[1,9]]"],
     "HiddenStateMSE.layer_map.pairs[0] names teacher layer 9, outside the allowed range 0..4."),
    (["experiment=tinybert_sst2", "student.attn_implementation=sdpa",
      "phases.intermediate.loss.terms.attention.source=log_probs"],
     "phases.intermediate reads attention probabilities (a term with source attentions/log_probs), which "
     "student.attn_implementation=sdpa does not return"),
    (["experiment=tinybert_sst2",
      "phases.prediction.loss.temperature={_target_:distill.schedules.Nope,start:4.0,end:1.0}"],
     "phases.prediction.loss could not be built: No module named 'distill.schedules.Nope'"),
    (["experiment=minilm_sst2", "student.num_attention_heads=4"],
     "ValueRelationKL needs equal head counts (student 4, teacher 2)"),
    (["experiment=mlm_distill"], "has no masked-LM head; mlm_distill needs a BertForMaskedLM checkpoint."),
    (["experiment=minilm_sst2", "+phases.attention.epochs=3"],
     "phases.attention has unknown keys ['epochs']; allowed are order, loss, max_epochs"),
    (["experiment=minilm_sst2", "phases.attention.order=first"], "phases.attention.order='first' must be a whole number"),
    (["+phases={a:{order:1,loss:kd}}"], "phases.a.loss must be a loss node: compose a preset with"),
    (["experiment=tinybert_sst2", "phases.general.order=5"],
     "phases.general has its own teacher (models), so its order must come before the phases that use the task teacher"),
    (["experiment=tinybert_sst2", "phases.general.seed=first"], "phases.general.seed='first' must be an integer"),
    (["experiment=tinybert_sst2", "+phases.general.optimizer.lr=-1e-4"],
     "phases.general.optimizer.lr=-0.0001 must be a positive number"),
    (["experiment=tinybert_sst2", "phases.general.data.max_samples=0"],
     "phases.general.data.max_samples=0 must be a positive number or null for all"),
]


@pytest.mark.parametrize("overrides, message", MISTAKES, ids=[m[:30] for _, m in MISTAKES])
def test_recipe_mistakes_stop_before_any_training(make_cfg, tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        run(make_cfg(*overrides))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not list(Path(tmp_path).glob("**/*.ckpt")) and not (tmp_path / "run" / "general").exists()


def test_a_phase_keeps_a_callback_of_its_own_but_changes_only_callbacks_the_run_has(make_cfg, tmp_path):
    freeze = "{_target_: distill.freeze.FreezeBelow, layer: 1}"
    cfg = make_cfg("experiment=minilm_sst2", "callbacks=none", f"+phases.attention.callbacks.freeze={freeze}",
                   "+phases.attention.callbacks.model_checkpoint.save_top_k=0")
    attention = phase_config(cfg, "attention", tmp_path)
    assert attention.callbacks.freeze._target_ == "distill.freeze.FreezeBelow"  # its own: kept
    assert "model_checkpoint" not in attention.callbacks  # a change to a callback the run does not have: dropped
    assert not phase_config(cfg, "prediction", tmp_path).callbacks
