"""Schedules: values at the first, middle and last step, and construction-time validation."""

from __future__ import annotations

import math

import pytest

from distill.errors import ConfigError
from distill.schedules import (
    Constant,
    Cosine,
    ExponentialDecay,
    Linear,
    Schedule,
    Step,
    Warmup,
    as_schedule,
)

TOTAL = 11  # steps 0..10: the middle step is 5, progress 0.5


def at(schedule, *steps: int, total: int = TOTAL) -> list[float]:
    return [schedule(s, total) for s in steps]


def test_constant_and_linear_keep_their_api():
    assert at(Constant(3), 0, 5, 10) == [3.0, 3.0, 3.0]
    assert at(Linear(1.0, 0.0), 0, 5, 10) == pytest.approx([1.0, 0.5, 0.0])  # α decay
    assert at(Linear(0.0, 2.0), 0, 5, 10) == pytest.approx([0.0, 1.0, 2.0])  # growth
    assert Linear(1.0, 0.0)(0, 1) == 0.0  # a one-step run is at its end
    assert isinstance(as_schedule(2, "loss.temperature"), Constant)


def test_cosine_first_middle_last():
    assert at(Cosine(4.0, 1.0), 0, 5, 10) == pytest.approx([4.0, 2.5, 1.0])
    # a quarter of the way: 1 + 3·(1 + cos(π/4))/2
    assert Cosine(4.0, 1.0)(1, 5) == pytest.approx(1 + 3 * (1 + math.cos(math.pi / 4)) / 2)


def test_exponential_decay_to_end_and_by_rate():
    assert at(ExponentialDecay(4.0, end=1.0), 0, 5, 10) == pytest.approx([4.0, 2.0, 1.0])  # geometric middle
    assert at(ExponentialDecay(8.0, rate=0.5), 0, 1, 3) == pytest.approx([8.0, 4.0, 1.0])
    assert ExponentialDecay(8.0, rate=0.5, min_value=2.0)(10, TOTAL) == 2.0


def test_step_by_fraction_and_by_steps():
    s = Step(values=[4.0, 2.0, 1.0], milestones=[0.5, 0.9])
    assert at(s, 0, 4, 5, 8, 9, 10) == [4.0, 4.0, 2.0, 2.0, 1.0, 1.0]
    s = Step(values=[3.0, 1.0], milestone_steps=[2])
    assert at(s, 0, 1, 2, 10) == [3.0, 3.0, 1.0, 1.0]


def test_warmup_by_fraction_and_steps():
    w = Warmup(2.0, warmup_fraction=0.5)  # ramps over steps 0..5 of 0..10
    assert at(w, 0, 1, 5, 10) == pytest.approx([0.0, 0.4, 2.0, 2.0])
    w = Warmup(1.0, warmup_steps=4, start=0.5)
    assert at(w, 0, 2, 4, 10) == pytest.approx([0.5, 0.75, 1.0, 1.0])
    assert Warmup(1.0, warmup_steps=0)(0, TOTAL) == 1.0


def test_all_are_schedules():
    for s in (Constant(1), Linear(1, 0), Cosine(2, 1), ExponentialDecay(2, end=1), Step([1, 2], [0.5]),
              Warmup(1, warmup_steps=3)):  # fmt: skip
        assert isinstance(s, Schedule) and isinstance(s(3, TOTAL), float)
        assert repr(s)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Constant(float("nan")), "Constant.value=nan must be a finite number"),
        (lambda: Linear("a", 1), "Linear.start='a' must be a finite number"),
        (lambda: Cosine(1.0, True), "Cosine.end=True must be a finite number"),
        (lambda: ExponentialDecay(1.0), "exactly one of end= or rate="),
        (lambda: ExponentialDecay(1.0, end=0.5, rate=0.5), "exactly one of end= or rate="),
        (lambda: ExponentialDecay(1.0, end=0.0), "needs start > 0 and end > 0"),
        (lambda: ExponentialDecay(1.0, rate=1.5), "ExponentialDecay.rate=1.5 must be in (0, 1]"),
        (lambda: Step([1.0, 2.0]), "exactly one of milestones="),
        (lambda: Step([1.0], [0.5]), "values needs one more entry than milestones"),
        (lambda: Step([1.0, 2.0, 3.0], [0.6, 0.4]), "must be strictly increasing"),
        (lambda: Step([1.0, 2.0], [1.5]), "must be fractions of the run in (0, 1]"),
        (lambda: Step([1.0, 2.0], milestone_steps=[2.5]), "positive whole step numbers"),
        (lambda: Warmup(1.0), "exactly one of warmup_fraction= or warmup_steps="),
        (lambda: Warmup(1.0, warmup_fraction=1.5), "Warmup.warmup_fraction=1.5 must be in [0, 1]"),
        (lambda: Warmup(1.0, warmup_steps=-1), "Warmup.warmup_steps=-1 must be a whole number"),
        (lambda: as_schedule(float("inf"), "loss.alpha"), "loss.alpha=inf must be a finite number"),
        (lambda: as_schedule("x", "loss.alpha"), "loss.alpha='x' must be a number or a schedule"),
    ],
)
def test_bad_values_raise_config_error(make, message):
    with pytest.raises(ConfigError) as err:
        make()
    assert message in str(err.value)
