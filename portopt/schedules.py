"""Host-side learning-rate schedules: pure functions of the number of steps taken.

Each returns a callable ``f(steps_taken) -> float`` for any schedulable hyperparameter
(``lr=...``): a frozen dataclass, so it prints its arguments, compares by value and
pickles (torch.save and torch.distributed.checkpoint store param groups holding one). Values use only IEEE ``+ - * /``, :func:`portopt.host_arithmetic.power` and the decimal
:func:`portopt.host_arithmetic.cosine` (not the C library's ``pow``/``cos``), so every platform and
backend sees the same numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .host_arithmetic import PI, cosine, power
from .hyperparams import check_real

__all__ = ["constant", "linear_warmup", "exponential_decay", "step_decay", "cosine_decay", "warmup_cosine", "join"]

Schedule = Callable[[int], float]


def constant(value: float) -> Schedule:
    """``f(t) = value``."""
    return Constant(check_real("value", value))


def linear_warmup(peak: float, warmup_steps: int) -> Schedule:
    """``f(t) = peak * (t + 1) / warmup_steps`` while ``t + 1 < warmup_steps``, then ``peak``."""
    return LinearWarmup(check_real("peak", peak), _positive_int("warmup_steps", warmup_steps))


def exponential_decay(initial: float, rate: float, every: int = 1) -> Schedule:
    """``f(t) = initial * rate ** (t // every)`` (staircase when ``every > 1``)."""
    return ExponentialDecay(check_real("initial", initial), check_real("rate", rate, high=1.0, closed_high=True),
                            _positive_int("every", every))


def join(first: Schedule, second: Schedule, boundary: int) -> Schedule:
    """``first(t)`` for ``t < boundary``, then ``second(t - boundary)``."""
    for name, schedule in (("first", first), ("second", second)):
        if not callable(schedule):
            raise TypeError(f"{name} must be a schedule (a callable), got {type(schedule).__name__}")
    return Join(first, second, _positive_int("boundary", boundary))


def step_decay(initial: float, gamma: float, step_size: int) -> Schedule:
    """``f(t) = initial * gamma ** (t // step_size)`` (torch's ``StepLR``)."""
    return exponential_decay(initial, gamma, _positive_int("step_size", step_size))


def cosine_decay(initial: float, decay_steps: int, final: float = 0.0) -> Schedule:
    """``f(t) = final + (initial - final) * (1 + cos(pi * t / decay_steps)) / 2`` for
    ``t <= decay_steps``, then ``final`` (torch's ``CosineAnnealingLR`` for its first period)."""
    return CosineDecay(check_real("initial", initial), _positive_int("decay_steps", decay_steps),
                       check_real("final", final))


def warmup_cosine(peak: float, warmup_steps: int, decay_steps: int, final: float = 0.0) -> Schedule:
    """Linear warmup to ``peak`` over ``warmup_steps``, then cosine decay to ``final`` over ``decay_steps``."""
    return join(linear_warmup(peak, warmup_steps), cosine_decay(peak, decay_steps, final), warmup_steps)


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")
    return value


# --- the schedules themselves (built by the checked functions above) ------------------------
@dataclass(frozen=True)
class Constant:
    value: float

    def __call__(self, t: int) -> float:
        return self.value


@dataclass(frozen=True)
class LinearWarmup:
    peak: float
    warmup_steps: int

    def __call__(self, t: int) -> float:
        return self.peak * (t + 1) / self.warmup_steps if t + 1 < self.warmup_steps else self.peak


@dataclass(frozen=True)
class ExponentialDecay:
    initial: float
    rate: float
    every: int

    def __call__(self, t: int) -> float:
        return self.initial * power(self.rate, t // self.every)


@dataclass(frozen=True)
class Join:
    first: Schedule
    second: Schedule
    boundary: int

    def __call__(self, t: int) -> float:
        return self.first(t) if t < self.boundary else self.second(t - self.boundary)


@dataclass(frozen=True)
class CosineDecay:
    initial: float
    decay_steps: int
    final: float

    def __call__(self, t: int) -> float:
        if t >= self.decay_steps:
            return self.final
        return self.final + (self.initial - self.final) * (1.0 + cosine(PI * t / self.decay_steps)) / 2.0
