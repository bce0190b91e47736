"""Host-side learning-rate schedules: pure functions of the number of steps taken.

Each returns a callable ``f(steps_taken) -> float`` for any schedulable hyperparameter
(``lr=...``). Values use only IEEE ``+ - * /``, :func:`portopt.host.power` and the decimal
:func:`portopt.host.cosine` (not the C library's ``pow``/``cos``), so every platform and
backend sees the same numbers.
"""

from __future__ import annotations

from typing import Callable

from .host import PI, cosine, power
from .hyperparams import check_number

__all__ = ["constant", "linear_warmup", "exponential_decay", "step_decay", "cosine_decay", "warmup_cosine", "join"]

Schedule = Callable[[int], float]


def constant(value: float) -> Schedule:
    """``f(t) = value``."""
    value = check_number("value", value)
    return lambda steps_taken: value


def linear_warmup(peak: float, warmup_steps: int) -> Schedule:
    """``f(t) = peak * (t + 1) / warmup_steps`` while ``t + 1 < warmup_steps``, then ``peak``."""
    peak = check_number("peak", peak)
    warmup_steps = _positive_int("warmup_steps", warmup_steps)
    return lambda t: peak * (t + 1) / warmup_steps if t + 1 < warmup_steps else peak


def exponential_decay(initial: float, rate: float, every: int = 1) -> Schedule:
    """``f(t) = initial * rate ** (t // every)`` (staircase when ``every > 1``)."""
    initial = check_number("initial", initial)
    rate = check_number("rate", rate, high=1.0, closed_high=True)
    every = _positive_int("every", every)
    return lambda t: initial * power(rate, t // every)


def join(first: Schedule, second: Schedule, boundary: int) -> Schedule:
    """``first(t)`` for ``t < boundary``, then ``second(t - boundary)``."""
    return lambda t: first(t) if t < boundary else second(t - boundary)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


def step_decay(initial: float, gamma: float, step_size: int) -> Schedule:
    """``f(t) = initial * gamma ** (t // step_size)`` (torch's ``StepLR``)."""
    return exponential_decay(initial, gamma, _positive_int("step_size", step_size))


def cosine_decay(initial: float, decay_steps: int, final: float = 0.0) -> Schedule:
    """``f(t) = final + (initial - final) * (1 + cos(pi * t / decay_steps)) / 2`` for
    ``t <= decay_steps``, then ``final`` (torch's ``CosineAnnealingLR`` for its first period)."""
    initial, final = check_number("initial", initial), check_number("final", final)
    decay_steps = _positive_int("decay_steps", decay_steps)

    def schedule(t: int) -> float:
        if t >= decay_steps:
            return final
        return final + (initial - final) * (1.0 + cosine(PI * t / decay_steps)) / 2.0

    return schedule


def warmup_cosine(peak: float, warmup_steps: int, decay_steps: int, final: float = 0.0) -> Schedule:
    """Linear warmup to ``peak`` over ``warmup_steps``, then cosine decay to ``final`` over ``decay_steps``."""
    return join(linear_warmup(peak, warmup_steps), cosine_decay(peak, decay_steps, final), warmup_steps)
