"""Learning-rate schedules as ``_partial_`` factories finished with the run's total step count."""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from distill.errors import ConfigError


def _warmup_steps(total_steps: int, warmup_ratio: float) -> int:
    if not 0.0 <= warmup_ratio < 1.0:
        raise ConfigError(f"scheduler.warmup_ratio={warmup_ratio} must be in [0, 1).")
    return int(round(warmup_ratio * total_steps))


def linear_warmup_decay(optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.1) -> LambdaLR:
    """Linear warm-up from 0 to the base LR over ``warmup_ratio`` of training, then linear decay to 0."""
    warmup = _warmup_steps(total_steps, warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return LambdaLR(optimizer, factor)


def cosine_warmup(optimizer: Optimizer, total_steps: int, warmup_ratio: float = 0.1) -> LambdaLR:
    """Linear warm-up, then half-cosine decay to 0."""
    warmup = _warmup_steps(total_steps, warmup_ratio)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    return LambdaLR(optimizer, factor)


def constant(optimizer: Optimizer, total_steps: int) -> LambdaLR:
    """The base learning rate throughout."""
    return LambdaLR(optimizer, lambda step: 1.0)
