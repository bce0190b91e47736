"""Checking hyperparameters, and evaluating the ones given as schedules.

A schedulable hyperparameter (``lr``, ``weight_decay``, ``eps``) is a number or a callable
``f(steps_taken) -> float`` run on the host before each step (0 before the first). Each
value is checked where it is known: numbers in the constructor, schedule values before
the step writes anything.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

__all__ = ["Schedule", "Hyperparameter", "check_number", "check_schedule", "check_real", "check_betas", "check_flag",
           "evaluate"]

Schedule = Callable[[int], float]
Hyperparameter = float | Schedule


def _check_range(name: str, value: float, low: float, high: float | None, *, closed_high: bool) -> float:
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    if high is not None and (value > high or (value == high and not closed_high)):
        bracket = "]" if closed_high else ")"
        raise ValueError(f"{name} must be in [{low}, {high}{bracket}, got {value!r}")
    return float(value)


def check_number(
    name: str,
    value: object,
    *,
    low: float = 0.0,
    high: float | None = None,
    closed_high: bool = False,
    schedulable: bool = False,
) -> Hyperparameter:
    """Validate a real hyperparameter (or, where ``schedulable``, a callable schedule)."""
    if schedulable and callable(value):
        return value  # checked on each evaluation by `evaluate`
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        kind = "a number or a callable schedule" if schedulable else "a real number"
        raise TypeError(f"{name} must be {kind}, got {type(value).__name__}")
    return _check_range(name, float(value), low, high, closed_high=closed_high)


def check_schedule(name: str, value: object) -> Hyperparameter:
    """A schedulable hyperparameter (``lr``, ``eps``, ``weight_decay``): a number >= 0, or a
    callable of the steps taken whose values are checked at each step."""
    return check_number(name, value, schedulable=True)


def check_betas(betas: object) -> tuple[float, float]:
    """``betas`` is a pair of numbers in [0, 1)."""
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise TypeError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    return (
        _number(check_number("betas[0]", betas[0], high=1.0)),
        _number(check_number("betas[1]", betas[1], high=1.0)),
    )


def _number(value: Hyperparameter) -> float:
    assert not callable(value)  # check_number without schedulable gives a float
    return value


def evaluate(name: str, value: Hyperparameter, steps_taken: int, *, low: float = 0.0) -> float:
    """The hyperparameter's value for the step after ``steps_taken`` steps, checked."""
    if not callable(value):
        return value
    result = value(steps_taken)
    if type(result) is float and low <= result < math.inf:  # the common case: no message is built
        return result
    if isinstance(result, bool) or not isinstance(result, numbers.Real):
        raise TypeError(
            f"{name} schedule returned {type(result).__name__} at step {steps_taken}; expected a float"
        )
    return _check_range(f"{name} (schedule value at step {steps_taken})", float(result), low, None, closed_high=False)


def check_real(name: str, value: object, *, low: float = 0.0, high: float | None = None,
               closed_high: bool = False) -> float:
    """A real hyperparameter that cannot be a schedule (``momentum``, ``rho``, ...), as a float."""
    return _number(check_number(name, value, low=low, high=high, closed_high=closed_high))


def check_flag(name: str, value: object) -> bool:
    """A boolean option (``amsgrad``, ``maximize``, ...): a real bool, not 1 or "yes"."""
    if not isinstance(value, bool):
        kind = type(value)
        raise TypeError(f"{name} must be a bool (True or False), got {value!r} of type "
                        f"{kind.__qualname__ if kind.__module__ == 'builtins' else kind.__module__ + '.' + kind.__qualname__}")
    return value


STATE_DTYPES = ("float16", "bfloat16", "float32", "float64")


MASTER_WEIGHTS = (None, "kahan", "split")


def check_master_weights(value: object) -> str | None:
    """``master_weights``: None, "kahan" (a compensation slot adds back what rounding the
    params dropped) or "split" (bfloat16 params and a slot of the low halves are a float32
    master weight: :mod:`portopt.split_master`)."""
    if not isinstance(value, str | None) or value not in MASTER_WEIGHTS:
        raise ValueError(f"master_weights must be None, 'kahan' or 'split', got {value!r}")
    return value


def check_state_dtype(value: object) -> str | None:
    """``state_dtype``: None (float32 for half-precision params, else the params' dtype) or
    the name of a floating dtype the state arrays are kept in."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"state_dtype must be None or a dtype name {STATE_DTYPES}, got {type(value).__name__}")
    if value not in STATE_DTYPES:
        raise ValueError(f"state_dtype must be None or one of {STATE_DTYPES}, got {value!r}")
    return value

