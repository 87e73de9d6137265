"""Stage ``general``: only the recipe's general-distillation phase(s); the general student is saved, no task run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from distill.distributed import leave_training
from distill.errors import ConfigError
from distill.phases import DONE, plan_phases, run_general_phase


def run(cfg: DictConfig, output_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run the phases with their own teacher (``models``) and copy the last one's student to ``<run>/general_student``."""
    general = [p for p in plan_phases(cfg, output_dir) if p.own_models]
    if not general:
        raise ConfigError("stage=general runs a recipe's general-distillation phase, and this config has none; use "
                          "experiment=tinybert_sst2 or mlm_distill, or add one with +phase@phases.general=general.")
    for phase in general:
        folder = run_general_phase(phase)
    if not leave_training():  # DDP: rank 0 alone copies the student into the run folder
        return {}, {}
    out = output_dir / "general_student"
    if out.resolve() != folder.resolve():
        shutil.copytree(folder, out, dirs_exist_ok=True)
    info = json.loads((folder.parent / DONE).read_text())
    metrics = {"general_loss": info.get("train_loss"), "general_steps": info.get("global_step")}
    print(f"\ngeneral student ({general[-1].name}, {info.get('global_step')} steps, final loss "
          f"{info.get('train_loss') or float('nan'):.4f}) saved to {out}\n", flush=True)
    return metrics, {"general_student": str(out)}
