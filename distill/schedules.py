"""Schedules for temperature and loss weights: callables ``(step, total_steps) -> float``.

A plain number in a config is a constant schedule. ``step`` counts optimizer steps from 0 and
``total_steps`` is the run's total (Lightning's ``estimated_stepping_batches``). Progress
``f = step / (total_steps - 1)`` is 0 at the first step and 1 at the last (see :func:`_fraction`).

Temperature: :class:`Constant`, :class:`Linear`, :class:`Cosine`, :class:`ExponentialDecay`,
:class:`Step`. Loss weights: :class:`Linear` (decay or growth of α) and :class:`Warmup` (ramp an
intermediate term in). Every schedule checks its arguments at construction and raises
:class:`~distill.errors.ConfigError` naming the bad argument. In a config a schedule is a node
``{_target_: distill.schedules.Cosine, start: 4.0, end: 1.0}``; range checks that depend on where a
schedule is used (T > 0, α in [0, 1]) are done by :class:`~distill.losses.DistillationObjective`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from distill.errors import ConfigError


@runtime_checkable
class Schedule(Protocol):
    def __call__(self, step: int, total_steps: int) -> float: ...


def _number(value, key: str) -> float:
    """``value`` as a finite float, else ConfigError naming ``key``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be a finite number.")
    return float(value)


class Constant:
    """The same value at every step."""

    def __init__(self, value: float) -> None:
        self.value = _number(value, "Constant.value")

    def __call__(self, step: int, total_steps: int) -> float:
        return self.value

    def __repr__(self) -> str:
        return f"Constant({self.value})"


class Linear:
    """Linear interpolation from ``start`` (step 0) to ``end`` (last step); decay or growth."""

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = _number(start, "Linear.start"), _number(end, "Linear.end")

    def __call__(self, step: int, total_steps: int) -> float:
        frac = _fraction(step, total_steps)
        return self.start + (self.end - self.start) * frac

    def __repr__(self) -> str:
        return f"Linear({self.start}→{self.end})"


class Cosine:
    """Half-cosine from ``start`` (step 0) to ``end`` (last step): ``end + (start−end)·(1 + cos πf)/2``.

    Flat near both ends, steepest in the middle; e.g. temperature annealing 4 → 1.
    """

    def __init__(self, start: float, end: float) -> None:
        self.start, self.end = _number(start, "Cosine.start"), _number(end, "Cosine.end")

    def __call__(self, step: int, total_steps: int) -> float:
        frac = _fraction(step, total_steps)
        return self.end + (self.start - self.end) * 0.5 * (1.0 + math.cos(math.pi * frac))

    def __repr__(self) -> str:
        return f"Cosine({self.start}→{self.end})"


class ExponentialDecay:
    """Geometric decay from ``start``: give exactly one of ``end`` or ``rate``.

    With ``end``: ``start·(end/start)^f``, reaching ``end`` at the last step whatever the run length
    (``start`` and ``end`` must be > 0). With ``rate`` in (0, 1]: ``start·rate^step`` per optimizer step,
    independent of ``total_steps``, floored at ``min_value`` (default 0).
    """

    def __init__(
        self, start: float, end: float | None = None, rate: float | None = None, min_value: float = 0.0
    ) -> None:
        self.start = _number(start, "ExponentialDecay.start")
        if (end is None) == (rate is None):
            raise ConfigError("ExponentialDecay needs exactly one of end= or rate=; got both or neither.")
        self.end = None if end is None else _number(end, "ExponentialDecay.end")
        self.rate = None if rate is None else _number(rate, "ExponentialDecay.rate")
        self.min_value = _number(min_value, "ExponentialDecay.min_value")
        if self.end is not None and not (self.start > 0 and self.end > 0):
            raise ConfigError(
                f"ExponentialDecay with end= needs start > 0 and end > 0; got start={self.start}, end={self.end}."
            )
        if self.rate is not None and not 0.0 < self.rate <= 1.0:
            raise ConfigError(f"ExponentialDecay.rate={self.rate} must be in (0, 1].")

    def __call__(self, step: int, total_steps: int) -> float:
        if self.end is not None:
            return self.start * (self.end / self.start) ** _fraction(step, total_steps)
        return max(self.start * self.rate ** max(step, 0), self.min_value)

    def __repr__(self) -> str:
        tail = f"→{self.end}" if self.end is not None else f", rate={self.rate}"
        return f"ExponentialDecay({self.start}{tail})"


class Step:
    """Piecewise constant: ``values[i]`` once ``i`` milestones have been passed.

    Give ``milestones`` as fractions of the run in (0, 1] (``[0.5]`` = halfway) or ``milestone_steps``
    as optimizer steps (> 0), strictly increasing, with ``len(values) == len(milestones) + 1``. A
    milestone is passed at the first step whose progress (or step number) is ≥ it.
    """

    def __init__(
        self,
        values: Sequence[float],
        milestones: Sequence[float] | None = None,
        milestone_steps: Sequence[int] | None = None,
    ) -> None:
        if (milestones is None) == (milestone_steps is None):
            raise ConfigError(
                "Step needs exactly one of milestones= (fractions) or milestone_steps= (steps)."
            )
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
            raise ConfigError(f"Step.values={values!r} must be a non-empty list of numbers.")
        self.values = [_number(v, f"Step.values[{i}]") for i, v in enumerate(values)]
        key = "Step.milestones" if milestones is not None else "Step.milestone_steps"
        marks = milestones if milestones is not None else milestone_steps
        if isinstance(marks, (str, bytes)) or not isinstance(marks, Sequence):
            raise ConfigError(f"{key}={marks!r} must be a list of numbers.")
        self.by_steps = milestone_steps is not None
        self.marks = [_number(m, f"{key}[{i}]") for i, m in enumerate(marks)]
        if len(self.values) != len(self.marks) + 1:
            raise ConfigError(
                f"Step.values has {len(self.values)} entries but {key} has {len(self.marks)}; "
                "values needs one more entry than milestones."
            )
        if any(b <= a for a, b in zip(self.marks[:-1], self.marks[1:], strict=True)):
            raise ConfigError(f"{key}={self.marks} must be strictly increasing.")
        if self.by_steps and any(m <= 0 or m != int(m) for m in self.marks):
            raise ConfigError(f"{key}={self.marks} must be positive whole step numbers.")
        if not self.by_steps and any(not 0.0 < m <= 1.0 for m in self.marks):
            raise ConfigError(f"{key}={self.marks} must be fractions of the run in (0, 1].")

    def __call__(self, step: int, total_steps: int) -> float:
        where = step if self.by_steps else _fraction(step, total_steps)
        return self.values[sum(1 for m in self.marks if where >= m)]

    def __repr__(self) -> str:
        return f"Step({self.values} at {self.marks}{' steps' if self.by_steps else ''})"


class Warmup:
    """Linear ramp from ``start`` (default 0) at step 0 to ``value`` at the end of warmup, then constant.

    Give exactly one of ``warmup_fraction`` in [0, 1] (of ``total_steps``) or ``warmup_steps`` ≥ 0.
    Meant for intermediate-layer loss weights that should not dominate the first updates.
    """

    def __init__(
        self,
        value: float,
        warmup_fraction: float | None = None,
        warmup_steps: int | None = None,
        start: float = 0.0,
    ) -> None:
        self.value = _number(value, "Warmup.value")
        self.start = _number(start, "Warmup.start")
        if (warmup_fraction is None) == (warmup_steps is None):
            raise ConfigError(
                "Warmup needs exactly one of warmup_fraction= or warmup_steps=; got both or neither."
            )
        self.fraction = (
            None if warmup_fraction is None else _number(warmup_fraction, "Warmup.warmup_fraction")
        )
        self.steps = None if warmup_steps is None else _number(warmup_steps, "Warmup.warmup_steps")
        if self.fraction is not None and not 0.0 <= self.fraction <= 1.0:
            raise ConfigError(f"Warmup.warmup_fraction={self.fraction} must be in [0, 1].")
        if self.steps is not None and (self.steps < 0 or self.steps != int(self.steps)):
            raise ConfigError(f"Warmup.warmup_steps={warmup_steps} must be a whole number ≥ 0.")

    def __call__(self, step: int, total_steps: int) -> float:
        length = self.steps if self.steps is not None else self.fraction * max(total_steps - 1, 0)
        if length <= 0 or step >= length:
            return self.value
        return self.start + (self.value - self.start) * max(step, 0) / length

    def __repr__(self) -> str:
        span = f"{self.steps:g} steps" if self.steps is not None else f"{self.fraction:g} of the run"
        return f"Warmup({self.start}→{self.value} over {span})"


def _fraction(step: int, total_steps: int) -> float:
    """Progress in [0, 1]: 0 at the first step, 1 at the last (``total_steps - 1``)."""
    if total_steps <= 1:
        return 1.0
    return min(max(step / (total_steps - 1), 0.0), 1.0)


def as_schedule(value: float | int | Schedule, key: str) -> Schedule:
    """Wrap a number as :class:`Constant`; pass schedules through; reject anything else by ``key``."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be a number or a schedule.")
    if isinstance(value, (int, float)):
        return Constant(_number(value, key))
    if callable(value):
        return value
    raise ConfigError(f"{key}={value!r} must be a number or a schedule (a _target_ from distill.schedules).")
