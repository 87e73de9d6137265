"""Logging: the W&B factory (offline without a key, WANDB_MODE wins), logger presets, config as
hyperparameters, and the throughput callback. Nothing here reaches the network."""

from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger
from omegaconf import OmegaConf
from transformers import BatchEncoding

from distill.config import build
from distill.loggers import (
    ThroughputMonitor,
    _batch_counts,
    command_group,
    log_config,
    phase_of,
    wandb_api_key,
    wandb_logger,
    wandb_mode,
)

NOTICE = "wandb: no API key found; logging offline to"


@pytest.fixture
def no_wandb_env(monkeypatch, tmp_path):
    """No API key anywhere: no env key, no WANDB_MODE, an empty home and no netrc file."""
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("NETRC", str(tmp_path / "home" / ".netrc"))
    return tmp_path


def _netrc(path: Path, host: str = "api.wandb.ai") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"machine {host}\n  login user\n  password {'k' * 40}\n")
    path.chmod(0o600)


def test_wandb_goes_offline_with_notice_without_api_key(no_wandb_env, capsys):
    logger = wandb_logger(save_dir=no_wandb_env / "run", project="distill", name="sst2-tiny")
    assert isinstance(logger, WandbLogger)
    assert logger._offline and wandb_mode() == "offline" and wandb_api_key() is None
    err = capsys.readouterr().err
    notice = [line for line in err.splitlines() if line.startswith(NOTICE)]
    assert notice == [f"{NOTICE} {no_wandb_env / 'run' / 'wandb'} (set WANDB_API_KEY or run `wandb login` to sync)"]
    assert logger._wandb_init["project"] == "distill" and logger.save_dir == str(no_wandb_env / "run")


def test_wandb_online_when_a_key_is_configured(no_wandb_env, monkeypatch, capsys):
    _netrc(no_wandb_env / "home" / ".netrc")
    assert wandb_api_key() == "k" * 40 and wandb_mode() == "online"
    logger = wandb_logger(save_dir=no_wandb_env / "run", project="distill")
    assert not logger._offline and NOTICE not in capsys.readouterr().err  # lazy: nothing contacted yet
    _netrc(no_wandb_env / "home" / ".netrc", host="example.org")  # an entry for another host is no key
    assert wandb_api_key() is None
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert wandb_mode() == "online"


@pytest.mark.parametrize("env, offline, mode_kwarg", [("offline", True, "offline"), ("dryrun", True, "offline"),
                                                      ("disabled", False, "disabled"),
                                                      ("online", False, "online")])
def test_wandb_respects_wandb_mode(no_wandb_env, monkeypatch, capsys, env, offline, mode_kwarg):
    monkeypatch.setenv("WANDB_MODE", env)
    logger = wandb_logger(save_dir=no_wandb_env / "run", project="distill", log_model=True)
    assert logger._offline is offline
    assert logger._wandb_init.get("mode") == mode_kwarg
    assert NOTICE not in capsys.readouterr().err  # the user chose; no notice
    assert logger._log_model is (env == "online")  # checkpoints can't be uploaded offline


def test_logger_presets_compose_and_build(make_cfg, no_wandb_env, capsys):
    assert list(make_cfg("logger=none").logger) == []
    cfg = make_cfg("logger=many")
    assert list(cfg.logger) == ["csv", "tensorboard", "wandb"]
    assert list(make_cfg("logger=csv_wandb").logger) == ["csv", "wandb"]
    built = {name: build(node, f"logger.{name}") for name, node in cfg.logger.items()}
    assert isinstance(built["csv"], CSVLogger) and isinstance(built["tensorboard"], TensorBoardLogger)
    assert isinstance(built["wandb"], WandbLogger) and built["wandb"]._offline
    assert built["wandb"]._wandb_init["name"] == "sst2-micro"
    assert NOTICE in capsys.readouterr().err


def test_wandb_runs_of_one_command_share_a_group_and_phases_are_named(make_cfg, no_wandb_env, tmp_path,
                                                                        monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    cfg = make_cfg("logger=wandb")
    run = build(cfg.logger.wandb, "logger.wandb")  # the run folder is tmp_path / "run"
    phase = wandb_logger(save_dir=tmp_path / "run" / "phases" / "2-prediction", project="distill", name="sst2-micro")
    general = wandb_logger(save_dir=tmp_path / "run" / "general", name="sst2-micro")
    inits = [lg._wandb_init for lg in (run, phase, general)]
    assert {i["group"] for i in inits} == {"sst2-micro-run"}
    assert [i["name"] for i in inits] == ["sst2-micro", "sst2-micro-prediction", "sst2-micro-general"]
    assert all(i["settings"].silent for i in inits)  # offline: the notice says where; no wandb banner
    assert phase_of(tmp_path / "run") is None and phase_of(tmp_path / "elsewhere") is None
    assert wandb_logger(save_dir=tmp_path / "run", name="x", group="mine")._wandb_init["group"] == "mine"
    monkeypatch.setenv("WANDB_RUN_GROUP", "ablation")  # wandb's own variable wins over the computed group
    assert wandb_logger(save_dir=tmp_path / "run", name="x")._wandb_init["group"] == "ablation"


def test_command_group_of_a_sweep_and_outside_hydra(make_cfg, tmp_path, monkeypatch):
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict, read_write

    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    cfg = make_cfg()
    monkeypatch.setattr(HydraConfig.instance(), "cfg", HydraConfig.instance().cfg)  # restored afterwards
    with read_write(cfg.hydra), open_dict(cfg.hydra):
        cfg.hydra.mode = "MULTIRUN"
        cfg.hydra.sweep.dir = str(tmp_path / "multirun" / "2026-01-02_03-04-05")
    HydraConfig.instance().set_config(cfg)
    assert command_group("sst2-micro") == "sst2-micro-2026-01-02_03-04-05"  # every job of the sweep
    monkeypatch.setattr(HydraConfig.instance(), "cfg", None)
    assert command_group("a") == command_group("a") and command_group("a").startswith("a-20")


def test_log_config_writes_resolved_config_and_presets(make_cfg, tmp_path):
    cfg = make_cfg("loss.temperature=3")
    logger = CSVLogger(tmp_path / "logs", name="csv")
    params = log_config([logger], cfg)
    logger.save()
    saved = yaml.safe_load(Path(logger.log_dir, "hparams.yaml").read_text())
    assert saved["loss"]["temperature"] == 3 and saved["presets"]["student"] == "micro"
    assert "hydra" not in saved and saved["paths"]["output_dir"] == str(tmp_path / "run")  # resolved
    assert params["optimizer"]["lr"] == cfg.optimizer.lr
    assert log_config(None, cfg) == {}
    plain = OmegaConf.create({"a": {"b": 1}})
    assert log_config(CSVLogger(tmp_path / "x"), plain)["a"] == {"b": 1}  # a single logger, any config


def test_batch_counts_use_the_attention_mask():
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    batch = BatchEncoding({"input_ids": torch.ones(2, 4, dtype=torch.long), "attention_mask": mask})
    assert _batch_counts(batch) == (2, 5)
    assert _batch_counts({"input_ids": torch.ones(3, 4)}) == (3, 12)
    assert _batch_counts(object()) == (0, 0)


class _Toy(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Embedding(10, 1)

    def training_step(self, batch, batch_idx):
        return self.layer(batch["input_ids"]).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_throughput_monitor_logs_examples_and_tokens_per_second(tmp_path):
    ids = torch.randint(0, 10, (24, 6))
    mask = torch.ones_like(ids)
    mask[:, 4:] = 0  # 4 real tokens per example
    data = [{"input_ids": i, "attention_mask": m} for i, m in zip(ids, mask)]
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    monitor = ThroughputMonitor(every_n_batches=2)
    logger = CSVLogger(tmp_path, name="csv")
    trainer = L.Trainer(max_epochs=1, logger=logger, callbacks=[monitor], enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(_Toy(), loader)
    rows = [r for r in (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()[1:] if r]
    header = (Path(logger.log_dir) / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"throughput/examples_per_s", "throughput/tokens_per_s", "throughput/batches_per_s"} <= set(header)
    assert len(rows) == 3  # 6 batches, logged every 2
    last = monitor.last
    assert last["throughput/tokens_per_s"] == pytest.approx(4 * last["throughput/examples_per_s"])
    assert last["throughput/examples_per_s"] == pytest.approx(4 * last["throughput/batches_per_s"])
    with pytest.raises(ValueError):
        ThroughputMonitor(every_n_batches=0)


def test_distill_run_logs_to_csv_and_offline_wandb_with_throughput(make_cfg, no_wandb_env, tmp_path, capsys,
                                                                   monkeypatch):
    """A real (tiny) run with logger=csv_wandb and the throughput callback: wandb writes an offline run, even
    when this process set wandb up earlier under WANDB_MODE=disabled (wandb caches its first settings)."""
    import wandb

    from distill.blocks import build_trainer
    from distill.train import run

    monkeypatch.setenv("WANDB_MODE", "disabled")
    build_trainer(make_cfg("logger=csv_wandb"), tmp_path / "earlier")  # logs the config: wandb.setup() runs
    wandb.finish()
    monkeypatch.delenv("WANDB_MODE")
    cfg = make_cfg("logger=csv_wandb", "callbacks.throughput.every_n_batches=1", "trainer.log_every_n_steps=1")
    try:
        run(cfg)
    finally:
        wandb.finish()
    out = tmp_path / "run"
    assert NOTICE in capsys.readouterr().err
    # also after an earlier build in this process under WANDB_MODE=disabled (wandb caches its first settings)
    assert len(list((out / "wandb").glob("offline-run-*"))) == 1
    (metrics,) = list(out.glob("csv/version_*/metrics.csv"))
    header = metrics.read_text().splitlines()[0].split(",")
    assert {"throughput/examples_per_s", "throughput/tokens_per_s", "train/loss", "val/score"} <= set(header)
    assert any(h.startswith("lr-") for h in header)  # LearningRateMonitor
