"""``run(cfg)``: validate the config once, then run its stage (``conf/stage/<name>.yaml`` names the function).

Like lightning-hydra-template's ``train``, a stage returns ``(metrics, objects)``; the Hydra entry point
(``train.py`` at the repo root) only calls :func:`run`. The config is read-only from here on: each
phase's effective config is a separate object (:func:`distill.phases.phase_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from distill.config import validate
from distill.console import seed_everything, setup_console
from distill.distributed import end_job


def run(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate ``cfg`` and run its stage; returns ``(metrics, objects)``.

    Under DDP every rank runs this; ranks other than 0 return empty metrics after fitting. Rank 0 then waits
    for them (:func:`distill.distributed.end_job`), so that the next job of a sweep starts its own ranks.
    """
    setup_console()
    validate(cfg)
    OmegaConf.set_readonly(cfg, True)
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    Path(cfg.paths.cache_dir).mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    try:
        result = get_method(cfg.stage._target_)(cfg, output_dir)
    except BaseException:
        end_job(failed=True)
        raise
    end_job()
    return result
