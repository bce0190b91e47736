"""The seeded host-side generator of initial parameters and gradients.

Counter-based, so any element of any step can be computed on its own, by anyone, from
FORMAT.md alone: SplitMix64 on 64-bit words, integer arithmetic only, then one exact
float64 value per element rounded once (round to nearest even) to the case's dtype.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..numerics import host_dtype

__all__ = ["GENERATOR_VERSION", "splitmix64", "initial_params", "gradient", "gradients", "special_values"]

GENERATOR_VERSION = "splitmix64-v1"

_GOLDEN_GAMMA = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def splitmix64(x: Any) -> np.ndarray:
    """SplitMix64's output function of ``x + golden gamma`` (all arithmetic modulo 2**64)."""
    with np.errstate(over="ignore"):
        z = np.asarray(x, dtype=np.uint64) + _GOLDEN_GAMMA
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


def _words(seed: int, leaf: int, step: Any, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Two 64-bit words per element: ``splitmix64(base + 2*i)`` and ``splitmix64(base + 2*i + 1)``,
    where ``base = splitmix64(splitmix64(seed + leaf) + step)``. ``step`` may be an array of
    steps: then the words have one row per step."""
    with np.errstate(over="ignore"):
        steps = np.asarray(step, dtype=np.uint64)
        base = splitmix64(splitmix64(np.uint64(seed) + np.uint64(leaf)) + steps)
        index = np.arange(count, dtype=np.uint64) * np.uint64(2) + base[..., None]
        return splitmix64(index), splitmix64(index + np.uint64(1))


def _finfo(dtype: np.dtype) -> Any:
    if dtype.name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.finfo(dtype)
    return np.finfo(dtype)


def special_values(dtype: np.dtype) -> np.ndarray:
    """±0, subnormals, the smallest normals, and values at and near the largest finite value."""
    info = _finfo(dtype)
    tiny = info.smallest_normal
    subnormal = info.smallest_subnormal
    values = [0.0, -0.0, subnormal, -subnormal, tiny - subnormal, -(tiny - subnormal),
              subnormal * 3, tiny, -tiny, info.max, -info.max, info.max / 2, -info.max / 2,
              info.eps, -info.eps, 1.0]
    return np.array(values, dtype=dtype)


def _values(words: tuple[np.ndarray, np.ndarray], dtype: np.dtype, lowest_exponent: int,
            exponent_count: int, specials: np.ndarray) -> np.ndarray:
    w0, w1 = words
    # Regular element: sign from bit 0 of w0, exponent from (w0 >> 8), 52 mantissa bits from w1.
    mantissa = (w1 >> np.uint64(12)) + np.uint64(1 << 52)
    exponent = (w0 >> np.uint64(8)) % np.uint64(exponent_count)
    magnitude = np.ldexp(mantissa.astype(np.float64), exponent.astype(np.int64) + (lowest_exponent - 52))
    sign = np.where((w0 & np.uint64(1)) == 1, -1.0, 1.0)
    values = (sign * magnitude).astype(dtype)
    # Special element: one in 16 (bits 1..4 of w0 all zero) takes a value from the table.
    is_special = ((w0 >> np.uint64(1)) & np.uint64(15)) == 0
    choice = ((w0 >> np.uint64(16)) % np.uint64(len(specials))).astype(np.int64)
    return np.where(is_special, specials[choice], values)


def initial_params(seed: int, leaf: int, shape: tuple[int, ...], dtype: str) -> np.ndarray:
    """Initial values of leaf ``leaf``: magnitudes in [2**-4, 2**3), 1/16 of them ±0 or subnormal."""
    np_dtype = host_dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    specials = special_values(np_dtype)[:7]
    return _values(_words(seed, leaf, 0, count), np_dtype, -4, 7, specials).reshape(shape)


def gradient(seed: int, leaf: int, step: int, shape: tuple[int, ...], dtype: str, schedule: dict) -> np.ndarray:
    """Gradient of leaf ``leaf`` at ``step`` (1-based): magnitudes in [2**-8, 2**4) plus specials.

    Steps in ``[run_start, run_end)`` repeat step ``run_start``; steps in
    ``[zero_start, zero_end)`` are all +0.
    """
    np_dtype = host_dtype(dtype)
    if schedule["zero_start"] <= step < schedule["zero_end"]:
        return np.zeros(shape, dtype=np_dtype)
    if schedule["run_start"] <= step < schedule["run_end"]:
        step = schedule["run_start"]
    count = int(np.prod(shape, dtype=np.int64))
    return _values(_words(seed, leaf, step, count), np_dtype, -8, 12, special_values(np_dtype)).reshape(shape)


def gradients(seed: int, leaf: int, steps: int, shape: tuple[int, ...], dtype: str, schedule: dict) -> np.ndarray:
    """The gradients of steps ``1 .. steps`` at once, one row per step: row ``t - 1`` is
    ``gradient(seed, leaf, t, ...)`` (the same words and values, computed for every step together)."""
    np_dtype = host_dtype(dtype)
    step = np.arange(1, steps + 1)
    step = np.where((schedule["run_start"] <= step) & (step < schedule["run_end"]), schedule["run_start"], step)
    count = int(np.prod(shape, dtype=np.int64))
    values = _values(_words(seed, leaf, step, count), np_dtype, -8, 12, special_values(np_dtype))
    zero = (schedule["zero_start"] <= step) & (step < schedule["zero_end"])
    values[zero] = 0
    return values.reshape((steps, *shape))
