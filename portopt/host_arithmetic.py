"""Host-side scalar arithmetic that gives the same bits on every platform.

Python's ``float ** int`` calls the C library's ``pow``, which is not guaranteed to be
correctly rounded and differs between platforms now and then. Bias corrections use
:func:`power` instead: square-and-multiply in double-double arithmetic built from IEEE
``+ - *`` alone (Dekker's exact product, no FMA), rounded once at the end. It depends on
nothing but IEEE 754, and is correctly rounded except when the exact power lies within
about ``n * 2**-104`` (relative) of a rounding boundary, or below ``2**-969`` where the
low word underflows (then within an ulp).
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

__all__ = ["power", "real_power", "cosine"]

_SPLITTER = 134217729.0  # 2**27 + 1, Veltkamp's constant for binary64


def _multiply(x: tuple[Any, Any], y: tuple[Any, Any]) -> tuple[Any, Any]:
    """Double-double product, renormalised so the high part is the rounded value; of Python
    floats, or elementwise of float64 arrays (one NumPy call per operation, so none can be
    contracted into an FMA).

    The high parts' product is exact as ``p + e`` (Dekker 1971: Veltkamp's split of each
    factor, then the partial products), the cross terms are added to ``e``, and the sum is
    renormalised.
    """
    a, b = x[0], y[0]
    p = a * b
    c = _SPLITTER * a
    a_high = c - (c - a)
    a_low = a - a_high
    c = _SPLITTER * b
    b_high = c - (c - b)
    b_low = b - b_high
    e = ((a_high * b_high - p) + a_high * b_low + a_low * b_high) + a_low * b_low
    e = e + (a * y[1] + x[1] * b)
    high = p + e
    return high, e - (high - p)


def power(base: float, exponent: int) -> float:
    """``base ** exponent`` for an integer ``exponent >= 0``, platform-independent.

    Meant for ``|base| <= 1`` (betas, decay rates); far above 1 the exact-product split
    overflows before the result does.

    The definition is square-and-multiply over the bits of the exponent, most significant
    first, each product in double-double; the high part is the result. Evaluated as a
    recursion (``x^e = (x^(e/2))²`` for even ``e``, ``x^(e-1) · x`` for odd) over blocks of
    consecutive exponents with NumPy's elementwise IEEE ``+ - *`` (:class:`_Powers`), so a run
    of steps costs a lookup each: the products, and so the bits, are those of the loop.
    """
    if type(exponent) is int and exponent > 0:  # the common case first
        powers = _POWERS.get(base)
        if powers is not None:
            return powers.high(exponent)
    if isinstance(exponent, bool) or not isinstance(exponent, int) or exponent < 0:
        raise ValueError(f"exponent must be >= 0 and an int, got {exponent!r}")
    if exponent == 0:
        return 1.0
    if base == 0.0 or base != base:  # ±0 (the sign of 0 must survive) and NaN: the loop, unremembered
        return _power_loop(base, exponent)
    if len(_POWERS) > 64:
        _POWERS.clear()
    powers = _POWERS[base] = _Powers(base)
    return powers.high(exponent)


def _power_loop(base: float, exponent: int) -> float:
    result = (1.0, 0.0)
    for bit in bin(exponent)[2:]:
        result = _multiply(result, result)
        if bit == "1":
            result = _multiply(result, (base, 0.0))
    return result[0]


_BLOCK = 512  # exponents per block
_KEPT = 4  # blocks kept per level


class _Powers:
    """Double-double powers of one base for ranges of consecutive exponents, a level per
    halving: the range ``[s, t)`` is the squares of level+1's ``[s//2, (t-1)//2]`` interleaved
    with those squares times the base (``x^(2k) = (x^k)²``, ``x^(2k+1) = x^(2k) · x``, the
    loop's own products, :func:`_multiply` on arrays). Each level keeps its last
    few blocks of ``_BLOCK`` exponents (runs at different step counts, e.g. param groups
    added later, each keep theirs), so a run of steps computes about two blocks (~80 NumPy
    calls) every ``_BLOCK`` steps."""

    def __init__(self, base: float) -> None:
        self.base = base
        self.levels: dict[int, list[tuple[int, np.ndarray, np.ndarray]]] = {}  # level: [(first, high, low)]
        self.tops: list[tuple[int, list[float]]] = []  # level 0's blocks as Python floats, most recent first

    def high(self, exponent: int) -> float:
        for first, highs in self.tops:
            offset = exponent - first
            if 0 <= offset < len(highs):
                return highs[offset]
        high, _ = self._range(0, exponent, exponent + 1)
        first, block, _ = self.levels[0][0]
        self.tops = [(first, block.tolist()), *self.tops[:_KEPT - 1]]
        return float(high[0])

    def _range(self, level: int, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(high, low) of the exponents ``first .. stop-1`` at ``level``, from one of its
        blocks or a new one (``_BLOCK`` wide, aligned; from 0 exactly as wide as asked, so the
        recursion from 0 halves down to x^0)."""
        blocks = self.levels.setdefault(level, [])
        for start, high, low in blocks:
            if start <= first and stop <= start + len(high):
                return high[first - start:stop - start], low[first - start:stop - start]
        start, end = first, stop
        if first > 0:
            width = max(stop - first, _BLOCK)
            start = first - first % width
            end = max(stop, start + width)
        high, low = self._block(level, start, end)
        blocks.insert(0, (start, high, low))
        del blocks[_KEPT:]
        return high[first - start:stop - start], low[first - start:stop - start]

    def _block(self, level: int, first: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        half_first, half_stop = first >> 1, ((stop - 1) >> 1) + 1
        if half_stop == 1:  # x^0 and x^1 from x^0 = (1, 0), which squares to (1, 0) exactly
            half_high, half_low = np.ones(1), np.zeros(1)
        else:
            half_high, half_low = self._range(level + 1, half_first, half_stop)
        count = len(half_high)
        with np.errstate(all="ignore"):  # overflow to inf, inf - inf: what the scalar code gives
            even = _multiply((half_high, half_low), (half_high, half_low))
            odd = _multiply(even, (np.full(count, self.base), np.zeros(count)))
        high, low = np.empty(2 * count), np.empty(2 * count)
        high[0::2], high[1::2], low[0::2], low[1::2] = even[0], odd[0], even[1], odd[1]
        offset = first - 2 * half_first
        return high[offset:offset + stop - first], low[offset:offset + stop - first]


# The powers of each base in use (betas, decay rates): a handful in any run.
_POWERS: dict[float, _Powers] = {}


_DIGITS = 40  # decimal digits for the transcendental helpers below


def real_power(base: float, exponent: float) -> float:
    """``base ** exponent`` for a real exponent, in 40-digit decimal arithmetic, rounded to a double.

    The decimal module is exact software arithmetic, so every platform gets the same bits
    (C's ``pow`` does not promise that). ``base > 0``. About 50 µs a call, so the last few
    thousand results are kept (a pure function of two floats: the same bits again; rules
    made again with the same hyperparameters, as the conformance suite's 32 cases of each
    variant, then ask for the same powers).
    """
    if not base > 0:
        raise ValueError(f"base must be > 0, got {base}")
    return _decimal_power(float(base), float(exponent))


@functools.lru_cache(maxsize=4096)
def _decimal_power(base: float, exponent: float) -> float:
    import decimal

    with decimal.localcontext() as context:
        context.prec = _DIGITS
        return float(decimal.Decimal(base) ** decimal.Decimal(exponent))


def cosine(x: float) -> float:
    """``cos(x)`` by its Taylor series in 40-digit decimal arithmetic, rounded to a double (|x| <= 8)."""
    import decimal

    if not -8.0 <= x <= 8.0:
        raise ValueError(f"cosine is meant for |x| <= 8 (schedules use [0, pi]), got {x}")
    with decimal.localcontext() as context:
        context.prec = _DIGITS + 10
        x2 = decimal.Decimal(x) ** 2
        term, total, n = decimal.Decimal(1), decimal.Decimal(1), 0
        while abs(term) > decimal.Decimal(10) ** -(_DIGITS + 5):
            n += 2
            term = -term * x2 / (n * (n - 1))
            total += term
        context.prec = _DIGITS
        return float(+total)


# pi to 40 digits, as the double nearest to it.
PI = float("3.141592653589793238462643383279502884197")
