"""Exact IEEE 754 reference results, computed with integers and fractions (no floating point).

Each function takes Python floats holding values of a binary format (binary16/32/64) and
returns the correctly rounded (round to nearest, ties to even) result in that format, with
IEEE 754 rules for zeros, infinities and NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

__all__ = ["FORMATS", "Format", "round_exact", "add", "subtract", "multiply", "divide", "sqrt",
           "maximum", "minimum", "convert"]

NAN = float("nan")
INF = float("inf")


@dataclass(frozen=True)
class Format:
    precision: int  # significand bits, hidden bit included
    emin: int
    emax: int


FORMATS = {
    "float16": Format(11, -14, 15),
    "float32": Format(24, -126, 127),
    "float64": Format(53, -1022, 1023),
    "bfloat16": Format(8, -126, 127),
}


def _floor_log2(q: Fraction) -> int:
    e = q.numerator.bit_length() - q.denominator.bit_length()
    # 2**e <= q < 2**(e+1), adjusting the estimate by one where needed
    if (q.numerator << max(-e, 0)) < (q.denominator << max(e, 0)):
        e -= 1
    return e


def round_exact(q: Fraction, fmt: Format, negative_zero: bool = False) -> float:
    """``q`` rounded to ``fmt`` (nearest, ties to even); overflow gives ±inf, underflow ±0."""
    if q == 0:
        return -0.0 if negative_zero else 0.0
    negative = q < 0
    a = -q if negative else q
    quantum = max(_floor_log2(a), fmt.emin) - (fmt.precision - 1)
    scaled = a / Fraction(2) ** quantum
    n = scaled.numerator // scaled.denominator
    remainder = scaled - n
    if remainder > Fraction(1, 2) or (remainder == Fraction(1, 2) and n % 2 == 1):
        n += 1
    if n == 0:
        return -0.0 if negative else 0.0
    value = Fraction(n) * Fraction(2) ** quantum
    if value >= Fraction(2) ** (fmt.emax + 1):
        return -INF if negative else INF
    result = float(value)  # exact: value is representable in fmt, and fmt fits in a double
    return -result if negative else result


def _sign(x: float) -> bool:
    return math.copysign(1.0, x) < 0


def add(x: float, y: float, fmt: Format) -> float:
    if math.isnan(x) or math.isnan(y):
        return NAN
    if math.isinf(x) or math.isinf(y):
        if math.isinf(x) and math.isinf(y) and _sign(x) != _sign(y):
            return NAN
        return x if math.isinf(x) else y
    exact = Fraction(x) + Fraction(y)
    # An exact zero sum is +0 unless both operands are -0 (round to nearest).
    return round_exact(exact, fmt, negative_zero=exact == 0 and _sign(x) and _sign(y))


def subtract(x: float, y: float, fmt: Format) -> float:
    return add(x, -y, fmt)


def multiply(x: float, y: float, fmt: Format) -> float:
    if math.isnan(x) or math.isnan(y):
        return NAN
    negative = _sign(x) != _sign(y)
    if math.isinf(x) or math.isinf(y):
        if x == 0 or y == 0:
            return NAN
        return -INF if negative else INF
    return round_exact(Fraction(x) * Fraction(y), fmt, negative_zero=negative)


def divide(x: float, y: float, fmt: Format) -> float:
    if math.isnan(x) or math.isnan(y):
        return NAN
    negative = _sign(x) != _sign(y)
    if math.isinf(x):
        return NAN if math.isinf(y) else (-INF if negative else INF)
    if math.isinf(y):
        return -0.0 if negative else 0.0
    if y == 0:
        return NAN if x == 0 else (-INF if negative else INF)
    return round_exact(Fraction(x) / Fraction(y), fmt, negative_zero=negative)


def sqrt(x: float, fmt: Format) -> float:
    """Correctly rounded square root: ``math.isqrt`` on a scaled integer, plus a sticky bit."""
    if math.isnan(x) or (x < 0):
        return NAN
    if x == 0 or math.isinf(x):
        return x
    q = Fraction(x)
    k = fmt.precision + 3 - _floor_log2(q) // 2
    scaled = q * Fraction(4) ** k if k >= 0 else q / Fraction(4) ** (-k)
    whole = scaled.numerator // scaled.denominator
    root = math.isqrt(whole)
    if root * root == scaled:
        exact = Fraction(root) / Fraction(2) ** k
    else:
        # The true root lies strictly between root and root+1 (scaled); with at least
        # precision+2 bits in root, the midpoint rounds the same way the true value does.
        exact = Fraction(2 * root + 1) / Fraction(2) ** (k + 1)
    return round_exact(exact, fmt)


def maximum(x: float, y: float, fmt: Format) -> float:
    """IEEE 754-2019 maximum: NaN propagates, +0 > -0."""
    if math.isnan(x) or math.isnan(y):
        return NAN
    if x == y:
        return y if _sign(x) else x
    return x if x > y else y


def minimum(x: float, y: float, fmt: Format) -> float:
    """IEEE 754-2019 minimum: NaN propagates, -0 < +0."""
    if math.isnan(x) or math.isnan(y):
        return NAN
    if x == y:
        return x if _sign(x) else y
    return x if x < y else y


def convert(x: float, fmt: Format) -> float:
    """``x`` (any binary format) rounded to ``fmt``."""
    if math.isnan(x) or math.isinf(x):
        return x
    return round_exact(Fraction(x), fmt, negative_zero=_sign(x))
