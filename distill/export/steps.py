"""Where an export's time goes: wall and CPU seconds of each named step.

    with recording() as steps:          # scripts/export.py records the whole command
        with step("onnx: export + int8"):
            ...
    steps  # [{"step": "onnx: export + int8", "wall_s": 31.2, "cpu_s": 29.8}, ...]

CPU is user + system time of this process and of the subprocesses it waited for (the runtime-memory
measurements run in fresh processes), so on a shared machine ``cpu_s`` says what a step costs and ``wall_s``
how long it took under that load. ``step`` outside ``recording`` only runs the block.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_ACTIVE: list[list[dict[str, Any]]] = []


def _cpu_s() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@contextmanager
def recording() -> Iterator[list[dict[str, Any]]]:
    """Collect the steps run inside the block into the yielded list (nested recordings each get them)."""
    steps: list[dict[str, Any]] = []
    _ACTIVE.append(steps)
    try:
        yield steps
    finally:
        _ACTIVE.remove(steps)


@contextmanager
def step(name: str) -> Iterator[None]:
    """Time the block as step ``name`` in every active recording (a step inside a step is recorded too;
    the outer one includes it)."""
    wall, cpu = time.perf_counter(), _cpu_s()
    try:
        yield
    finally:
        record = {"step": name, "wall_s": time.perf_counter() - wall, "cpu_s": _cpu_s() - cpu}
        for steps in _ACTIVE:
            steps.append(record)


def summary(steps: list[dict[str, Any]]) -> str:
    """One line per step: ``wall_s  cpu_s  name``."""
    lines = [f"{'wall s':>8} {'cpu s':>8}  step"]
    lines += [f"{s['wall_s']:8.1f} {s['cpu_s']:8.1f}  {s['step']}" for s in steps]
    return "\n".join(lines)


__all__ = ["recording", "step", "summary"]
