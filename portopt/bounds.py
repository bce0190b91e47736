"""Box bounds in scipy's forms, and the exact projection onto them.

``bounds`` is ``scipy.optimize.Bounds(lb, ub)`` (any object with ``lb`` and ``ub``: scalars
or one value per element) or a sequence of ``(min, max)`` pairs, one per element, ``None``
for unbounded. Elements are counted over the leaves of ``x`` in tree order, each leaf in C
order. Each bound becomes an array of its leaf's dtype, rounded towards the feasible side
(a lower bound up, an upper bound down), so a projected point never lies outside the box.
The projection ``where(x < lb, lb, where(x > ub, ub, x))`` is exact; NaN stays NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .numerics import dtype_name, host_dtype

__all__ = ["Box", "box_for", "project"]


@dataclass(frozen=True)
class Box:
    """Per-leaf lower and upper bounds, arrays shaped and typed like the leaves."""

    lower: list
    upper: list


def _pairs(bounds: Any, count: int) -> tuple[np.ndarray, np.ndarray]:
    """float64 lower and upper bounds, one per element, from either of scipy's forms."""
    if hasattr(bounds, "lb") and hasattr(bounds, "ub"):
        lower, upper = (_per_element(np.asarray(side, dtype=np.float64).reshape(-1), count)
                        for side in (bounds.lb, bounds.ub))
        if lower.shape != (count,) or upper.shape != (count,):
            raise ValueError(f"bounds.lb and bounds.ub must be single values or have one value per element of x0 "
                             f"({count}), got {np.shape(bounds.lb)} and {np.shape(bounds.ub)}")
        return lower, upper
    if isinstance(bounds, np.ndarray) and bounds.ndim == 2 and bounds.shape[1] == 2:  # an (n, 2) array of pairs
        bounds = [tuple(row) for row in bounds.tolist()]
    if not isinstance(bounds, Sequence) or isinstance(bounds, (str, bytes)):
        raise TypeError(f"bounds must be scipy.optimize.Bounds or a sequence of (min, max) pairs, got "
                        f"{type(bounds).__name__}")
    if len(bounds) != count:
        raise ValueError(f"bounds has {len(bounds)} (min, max) pairs, x0 has {count} elements")
    lower, upper = np.empty(count), np.empty(count)
    for index, pair in enumerate(bounds):
        if isinstance(pair, np.ndarray) and pair.shape == (2,):
            pair = tuple(pair.tolist())
        if not isinstance(pair, Sequence) or len(pair) != 2:
            raise ValueError(f"bounds[{index}] must be a (min, max) pair, got {pair!r}")
        low, high = pair
        lower[index] = -math.inf if low is None else _number(f"bounds[{index}][0]", low)
        upper[index] = math.inf if high is None else _number(f"bounds[{index}][1]", high)
    return lower, upper


def _per_element(values: np.ndarray, count: int) -> np.ndarray:
    """One value per element: a single value is broadcast, as scipy's Bounds does."""
    return np.broadcast_to(values, (count,)) if values.size == 1 else values


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{where} must be a real number or None, got {value!r}")
    return float(value)


def _rounded_inwards(values: np.ndarray, dtype: np.dtype, towards: float) -> np.ndarray:
    """``values`` in ``dtype``, each rounded to the nearest value on the ``towards`` side of it."""
    with np.errstate(over="ignore"):  # a bound beyond the dtype's range becomes ±inf, then is moved inwards
        rounded = values.astype(dtype)
    wrong_side = rounded.astype(np.float64) < values if towards > 0 else rounded.astype(np.float64) > values
    if wrong_side.any():
        rounded[wrong_side] = np.nextafter(rounded[wrong_side], np.asarray(towards, dtype=dtype))
    return rounded


def box_for(bounds: Any, leaves: list, xp: Any, adapter: Any, device: Any) -> Box:
    """The checked bounds for ``leaves``, as arrays of their backend, device and dtype."""
    sizes = [math.prod(leaf.shape) for leaf in leaves]
    lower, upper = _pairs(bounds, sum(sizes))
    if np.isnan(lower).any() or np.isnan(upper).any():
        raise ValueError("bounds must not be NaN (use None or ±inf for an unbounded side)")
    if (lower > upper).any():
        index = int(np.argmax(lower > upper))
        raise ValueError(f"bounds: element {index} has min {lower[index]!r} > max {upper[index]!r}")
    box = Box([], [])
    start = 0
    for leaf, size in zip(leaves, sizes):
        name = dtype_name(xp, leaf.dtype)
        dtype = host_dtype(name)
        rounded = [_rounded_inwards(np.ascontiguousarray(values[start:start + size]), dtype, towards)
                   for values, towards in ((lower, math.inf), (upper, -math.inf))]
        empty = rounded[0].astype(np.float64) > rounded[1].astype(np.float64)
        if empty.any():
            index = start + int(np.argmax(empty))
            raise ValueError(f"bounds: element {index}, [{lower[index]!r}, {upper[index]!r}], holds no {name} value")
        for part, out in zip(rounded, (box.lower, box.upper)):
            part = part.reshape(leaf.shape)
            out.append(adapter.bfloat16_from_bits(part.view(np.uint16), device) if name == "bfloat16"
                       else adapter.from_numpy(part, device))
        start += size
    return box


def project(xp: Any, x: Any, lower: Any, upper: Any) -> Any:
    """``x`` clipped to ``[lower, upper]`` elementwise; exact, and NaN stays NaN."""
    return xp.where(x < lower, lower, xp.where(x > upper, upper, x))
