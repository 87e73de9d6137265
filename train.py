"""Hydra entry point: ``python train.py student=tiny data=sst2 ...`` (see README.md and conf/)."""

from __future__ import annotations

import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from distill.console import setup_console

setup_console()  # before transformers / torchao are imported: their import-time notices are filtered

from distill.errors import DistillError  # noqa: E402
from distill.resolvers import register  # noqa: E402

register()


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    from distill.train import run

    try:
        metrics, _ = run(cfg)
    except DistillError as err:
        print(f"error: {err}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            return None  # one bad trial must not end the whole sweep; Hydra/Optuna record it as failed
        sys.exit(2)
    value = metrics.get(cfg.optimized_metric)
    return float(value) if value is not None else None


if __name__ == "__main__":
    main()
