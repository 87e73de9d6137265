"""Several processes on CPU (Lightning DDP over gloo), FSDP and SLURM configs, and their bad values.

The DDP check: DistributedSampler-style shards draw one permutation per epoch (``seed + epoch``) whatever the
world size, and rank r's j-th example of step k is perm[2kb + 2j + r]; so the two ranks' step-k batches
together are exactly the batch of 2b that one process (DDP with one device, same sampler) takes at step k.
With dropout off, the losses averaged over the ranks must then equal the one-process losses step by step.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from conftest import compose_cfg, fast_overrides, make_tokenizer, run_cli
from omegaconf import OmegaConf
from test_train import _main_in_process

TOLERANCE = 1e-5  # float32 sums in another order (two half batches, then an all-reduce), nothing more


@pytest.fixture(scope="module")
def no_dropout_teacher(tmp_path_factory) -> Path:
    """A tiny BERT teacher whose config (and so the student's) has every dropout off."""
    from transformers import BertConfig, BertForSequenceClassification

    path = tmp_path_factory.mktemp("teacher0")
    tokenizer = make_tokenizer(path)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64, num_labels=2, hidden_dropout_prob=0.0,
                        attention_probs_dropout_prob=0.0, classifier_dropout=0.0)
    BertForSequenceClassification(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "csv" / "version_0" / "metrics.csv") as fh:
        return {int(r["step"]): float(r["train/global_loss"]) for r in csv.DictReader(fh) if r["train/global_loss"]}


def _args(glue_dir, teacher, tmp_path, *extra):
    # 32 examples, 2 epochs: 4 steps an epoch at a global batch of 8; the second epoch checks seed + epoch
    return [*fast_overrides(glue_dir, teacher, tmp_path / "cache"), "trainer=ddp_cpu", "trainer.max_epochs=2",
            "logger=csv", "trainer.log_every_n_steps=1", "+callbacks.global_loss._target_=distill.distributed.GlobalTrainLoss",
            *extra]


@pytest.mark.slow
def test_two_processes_match_one_process_and_only_rank_zero_writes(glue_dir, no_dropout_teacher, tmp_path):
    two = run_cli([*_args(glue_dir, no_dropout_teacher, tmp_path, "data.batch_size=4"), f"hydra.run.dir={tmp_path / 'two'}"])
    assert two.returncode == 0, two.stderr[-3000:]
    one = run_cli([*_args(glue_dir, no_dropout_teacher, tmp_path, "data.batch_size=8", "trainer.devices=1"),
                   f"hydra.run.dir={tmp_path / 'one'}"])
    assert one.returncode == 0, one.stderr[-3000:]
    a, b = _losses(tmp_path / "two"), _losses(tmp_path / "one")
    assert sorted(a) == sorted(b) == list(range(8))
    worst = max(abs(a[k] - b[k]) for k in a)
    assert worst < TOLERANCE, (a, b)
    print(f"largest per-step loss difference, 2 processes vs 1: {worst:.2e}")  # docs/benchmarks/distributed.md
    run = tmp_path / "two"
    assert (run / "train_ddp_process_1.log").is_file()  # rank 1 ran in the same folder ...
    assert (run / "report.json").is_file() and (run / "student" / "config.json").is_file()
    assert two.stdout.count("sst2 dev (") == 1  # ... and the report was made (and printed) once, by rank 0
    assert not list(run.glob("**/.*.tmp")) and not list(tmp_path.glob("outputs*"))
    rows = {r["model"]: r for r in json.loads((run / "report.json").read_text())["models"]}
    assert rows["student"]["score"] is not None


def test_teacher_is_replicated_and_left_out_of_gradient_buckets(make_cfg, tmp_path):
    """DDP (as Lightning wraps the module) all-reduces only parameters that require grad: the student's."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from distill.blocks import build_objective
    from distill.data.tasks import get_task
    from distill.models.teacher import load_classifier
    from distill.module import DistillationModule
    from distill.optim import linear_warmup_decay
    from distill.stages.distill import build_student

    cfg = make_cfg()
    task = get_task("sst2")
    teacher = load_classifier(str(cfg.teacher.name_or_path), task)
    student = build_student(cfg, teacher, None)
    module = DistillationModule(student, teacher, task, objective=build_objective(cfg.loss, student, teacher),
                                optimizer=torch.optim.AdamW, scheduler=linear_warmup_decay)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        wrapped = DistributedDataParallel(module)
        bucketed = {id(p) for p in wrapped._build_params_for_reducer()[0]}  # what the reducer all-reduces
        logged = wrapped._get_ddp_logging_data()  # DDP's own account of its gradient buckets
    finally:
        dist.destroy_process_group()
    trainable = [p for p in module.parameters() if p.requires_grad]
    assert bucketed and not bucketed & {id(p) for p in teacher.parameters()}
    assert bucketed == {id(p) for p in trainable}
    assert logged["num_parameter_tensors"] == len(trainable)
    assert logged["total_parameter_size_bytes"] == sum(p.numel() * p.element_size() for p in trainable)
    assert all(not p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_fsdp_config_builds_sharding_strategy(tmp_path):
    from lightning.pytorch.strategies import FSDPStrategy
    from torch.distributed.fsdp import ShardingStrategy
    from transformers.models.bert.modeling_bert import BertLayer

    from distill.config import build

    cfg = compose_cfg(["trainer=fsdp"], tmp_path)
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.devices == -1
    strategy = build(cfg.trainer.strategy, "trainer.strategy")
    assert isinstance(strategy, FSDPStrategy) and type(strategy).__module__ == "distill.distributed"
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD and strategy._state_dict_type == "full"
    assert strategy.kwargs["use_orig_params"] is True  # frozen teacher and trainable student share the root unit
    assert strategy.kwargs["auto_wrap_policy"]._module_classes == {BertLayer}


def test_slurm_launcher_composes_with_the_trainer_task_counts(tmp_path):
    from hydra.utils import get_class

    cfg = compose_cfg(["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"], tmp_path)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert get_class(launcher["_target_"]).__name__ == "SlurmLauncher"
    assert (launcher["nodes"], launcher["tasks_per_node"], launcher["gpus_per_node"]) == (2, 4, 4)
    assert launcher["timeout_min"] > 0 and launcher["max_num_timeout"] >= 1
    assert cfg.trainer.strategy._target_ == "distill.distributed.DDPStrategy"


def test_slurm_task_count_must_match_the_trainer(glue_dir, tiny_teacher, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "4")
    monkeypatch.setenv("SLURM_JOB_NAME", "distill")
    args = [*fast_overrides(glue_dir, tiny_teacher, tmp_path / "cache"), f"paths.log_dir={tmp_path}", "trainer.devices=2"]
    code, err = _main_in_process(args, monkeypatch, capsys)
    assert code == 2 and "trainer.devices=2 must equal the SLURM job's tasks per node (4)" in err, err[-2000:]


@pytest.mark.slow
def test_multirun_with_ddp_keeps_one_folder_per_job(glue_dir, no_dropout_teacher, tmp_path):
    """Each job's rank 1 runs that job alone, in the job's folder (Lightning's stock launcher re-ran the sweep)."""
    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", *fast_overrides(glue_dir, no_dropout_teacher, tmp_path / "cache"), "trainer=ddp_cpu",
                    "data.batch_size=4", "logger=csv", "loss.temperature=1,4", f"hydra.sweep.dir={sweep}",
                    f"paths.log_dir={tmp_path / 'logs'}"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = sorted(p.name for p in sweep.iterdir() if p.is_dir())
    assert jobs == ["0", "1"] and not (tmp_path / "logs").exists()
    for job in jobs:
        assert (sweep / job / "report.json").is_file() and (sweep / job / "train_ddp_process_1.log").is_file()
    assert proc.stdout.count("sst2 dev (") == 2
