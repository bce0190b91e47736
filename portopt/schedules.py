"""Host-side learning-rate schedules: pure functions of the number of steps taken.

Each returns a callable ``f(steps_taken) -> float`` for any schedulable hyperparameter
(``lr=...``). Values use only IEEE ``+ - * /`` and :func:`portopt.host.power`, so every
platform and backend sees the same numbers.
"""

from __future__ import annotations

from typing import Callable

from .host import power
from .hyperparams import check_number

__all__ = ["constant", "linear_warmup", "exponential_decay", "join"]

Schedule = Callable[[int], float]


def constant(value: float) -> Schedule:
    """``f(t) = value``."""
    value = check_number("value", value)
    return lambda steps_taken: value


def linear_warmup(peak: float, warmup_steps: int) -> Schedule:
    """``f(t) = peak * (t + 1) / warmup_steps`` while ``t + 1 < warmup_steps``, then ``peak``."""
    peak = check_number("peak", peak)
    if not isinstance(warmup_steps, int) or warmup_steps < 1:
        raise ValueError(f"warmup_steps must be an int >= 1, got {warmup_steps!r}")
    return lambda t: peak * (t + 1) / warmup_steps if t + 1 < warmup_steps else peak


def exponential_decay(initial: float, rate: float, every: int = 1) -> Schedule:
    """``f(t) = initial * rate ** (t // every)`` (staircase when ``every > 1``)."""
    initial = check_number("initial", initial)
    rate = check_number("rate", rate, high=1.0, closed_high=True)
    if not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    return lambda t: initial * power(rate, t // every)


def join(first: Schedule, second: Schedule, boundary: int) -> Schedule:
    """``first(t)`` for ``t < boundary``, then ``second(t - boundary)``."""
    return lambda t: first(t) if t < boundary else second(t - boundary)
