"""conf/experiment/ recipes end to end on tiny models, multi-phase resume, and recipe mistakes caught early."""

import json
from pathlib import Path

import pytest
import torch
from conftest import CONF

from distill import phases as phases_mod
from distill.errors import ConfigError
from distill.phases import adopt_previous_run, plan_phases
from distill.train import run

pytestmark = pytest.mark.usefixtures("single_thread")

SHRINK = ["data.max_train_samples=16", "general.max_samples=24", "logger=none"]
RECIPES = {
    "distilbert_sst2": ["student=distil"],
    "tinybert_sst2": ["phases.0.max_epochs=1"],
    "minilm_sst2": ["phases.0.max_epochs=1", "phases.1.max_epochs=1"],
    "tinybert_aug_sst2": ["phases.0.max_epochs=1", "augment.copies=2"],
    "mlm_distill": ["student=distil"],
}


def test_every_recipe_has_a_smoke_run():
    assert set(RECIPES) == {p.stem for p in (CONF / "experiment").glob("*.yaml")}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_runs_end_to_end(make_cfg, tmp_path, tiny_mlm_teacher, name):
    extra = [f"teacher.name_or_path={tiny_mlm_teacher}"] if name == "mlm_distill" else []
    cfg = make_cfg(f"experiment={name}", *SHRINK, *RECIPES[name], *extra)
    metrics, _ = run(cfg)
    out = tmp_path / "run"
    assert (out / "report.json").is_file() and (out / "student" / "config.json").is_file()
    assert 0.0 <= metrics["student_score"] <= 1.0
    for i, phase in enumerate(cfg.phases or []):
        done = json.loads((out / "phases" / f"{i + 1}-{phase.name}" / "done.json").read_text())
        assert done["name"] == phase.name and done["global_step"] > 0
    if cfg.general.before_distill:
        (cached,) = (tmp_path / "cache" / "general").iterdir()
        assert (cached / "config.json").is_file() and (cached / "tokenizer_config.json").is_file()
        assert (cached / "distill_general.json").is_file()
    if cfg.augment.enabled:
        assert len(list((tmp_path / "cache" / "augmented").iterdir())) == 1


def test_general_student_is_cached_and_reused(make_cfg, tmp_path, caplog):
    args = ["experiment=tinybert_sst2", *SHRINK, "phases.0.max_epochs=1", "callbacks=none"]
    run(make_cfg(*args, output="first"))
    (cached,) = (tmp_path / "cache" / "general").iterdir()
    stamp = (cached / "model.safetensors").stat().st_mtime_ns
    with caplog.at_level("INFO", logger="distill"):
        run(make_cfg(*args, output="second"))
    assert f"Reusing the general student cached at {cached}" in caplog.text
    assert not (tmp_path / "second" / "general").exists()
    assert (cached / "model.safetensors").stat().st_mtime_ns == stamp
    run(make_cfg(*args, "general.max_samples=20", output="third"))  # other texts, other cache entry
    assert len(list((tmp_path / "cache" / "general").iterdir())) == 2
    # another task seed starts from the same general student when general.seed pins it ...
    run(make_cfg(*args, "seed=1", "general.seed=42", output="fourth"))
    assert not (tmp_path / "fourth" / "general").exists()
    assert len(list((tmp_path / "cache" / "general").iterdir())) == 2
    # ... and, unset, the general seed follows the run's: a new general student
    run(make_cfg(*args, "seed=1", output="fifth"))
    assert (tmp_path / "fifth" / "general").is_dir()
    assert len(list((tmp_path / "cache" / "general").iterdir())) == 3
    # the task runs' learning rate leaves the general student alone when general.lr keeps the general one
    run(make_cfg(*args, "optimizer.lr=3e-4", "general.lr=1e-4", output="sixth"))
    assert not (tmp_path / "sixth" / "general").exists()
    run(make_cfg(*args, "optimizer.lr=3e-4", output="seventh"))  # general.lr unset: the run's 3e-4
    assert len(list((tmp_path / "cache" / "general").iterdir())) == 4


def test_general_lr_sets_the_general_stage_optimizer_only(make_cfg):
    from distill.general import general_config

    cfg = make_cfg("experiment=tinybert_sst2", "optimizer.lr=3e-4", "general.lr=5e-5")
    assert general_config(cfg, Path("unused")).optimizer.lr == 5e-5 and cfg.optimizer.lr == 3e-4
    assert general_config(make_cfg("optimizer.lr=3e-4"), Path("unused")).optimizer.lr == 3e-4


def test_finished_phase_is_skipped_on_resume(make_cfg, tmp_path, caplog, monkeypatch):
    args = ["experiment=minilm_sst2", *SHRINK, "phases.0.max_epochs=1", "phases.1.max_epochs=1"]
    run(make_cfg(*args))
    first, second = tmp_path / "run" / "phases" / "1-attention", tmp_path / "run" / "phases" / "2-prediction"
    stamps = {p: p.stat().st_mtime_ns for p in (first / "student.pt", first / "checkpoints" / "last.ckpt")}
    # as if killed during phase 2: its marker and the report are gone, its last.ckpt is there
    for path in (second / "done.json", second / "student.pt", tmp_path / "run" / "report.json"):
        path.unlink()
    seen = {}
    real_fit = phases_mod._fit_one

    def spy(pcfg, phase, n, objective, student, teacher, *rest):
        seen[phase.name] = {k: v.clone() for k, v in student.state_dict().items()}
        return real_fit(pcfg, phase, n, objective, student, teacher, *rest)

    monkeypatch.setattr(phases_mod, "_fit_one", spy)
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


def test_phase_loss_may_name_a_preset(make_cfg, tmp_path):
    cfg = make_cfg("phases=[{name:inter,loss:tinybert_intermediate,max_epochs:3},{name:pred,loss:kd,optimizer:{lr:0.5}}]")
    inter, pred = plan_phases(cfg, tmp_path)
    assert set(inter.loss.terms) == {"hidden", "attention"} and pred.loss.soft is not None
    assert inter.config(cfg).trainer.max_epochs == 3 and inter.out_dir == tmp_path / "phases" / "1-inter"
    assert pred.config(cfg).optimizer.lr == 0.5 and pred.config(cfg).trainer.max_epochs == cfg.trainer.max_epochs
    assert pred.config(cfg).paths.output_dir == str(tmp_path / "phases" / "2-pred") and pred.final


MISTAKES = [
    (["experiment=tinybert_sst2", "loss_presets.intermediate.terms.hidden.layer_map.strategy=explicit",
      "+loss_presets.intermediate.terms.hidden.layer_map.pairs=[[1,9]]"],
     "phases[0] (intermediate): HiddenStateMSE.layer_map.pairs[0] names teacher layer 9, outside the allowed range 0..4."),
    (["experiment=tinybert_sst2", "student.attn_implementation=sdpa",
      "loss_presets.intermediate.terms.attention.source=log_probs"],
     "phases[0] reads attention probabilities (a term with source attentions/log_probs), which "
     "student.attn_implementation=sdpa does not return"),
    (["experiment=tinybert_sst2",
      "loss_presets.prediction.temperature={_target_:distill.schedules.Nope,start:4.0,end:1.0}"],
     "phases[1].loss could not be built: No module named 'distill.schedules.Nope'"),
    (["experiment=minilm_sst2", "student.num_attention_heads=4"],
     "phases[0] (attention): ValueRelationKL needs equal head counts (student 4, teacher 2)"),
    (["experiment=mlm_distill"], "has no masked-LM head; mlm_distill needs a BertForMaskedLM checkpoint."),
    (["phases=[{name:a,epochs:3}]"], "phases[0] has unknown keys ['epochs']; allowed are name, loss, max_epochs"),
    (["phases=[{name:a,loss:nope}]"], "phases[0].loss='nope' is not a loss preset; available: ce, distilbert"),
    (["phases=[{name:a,loss:kd},{name:a,loss:kd}]"], "phases[1].name='a' must be a unique word"),
]


@pytest.mark.parametrize("overrides, message", MISTAKES, ids=[m[:30] for _, m in MISTAKES])
def test_recipe_mistakes_stop_before_any_training(make_cfg, tmp_path, overrides, message):
    with pytest.raises(ConfigError) as err:
        run(make_cfg(*overrides))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert not list(Path(tmp_path).glob("**/*.ckpt")) and not (tmp_path / "run" / "general").exists()
