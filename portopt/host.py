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

__all__ = ["power"]

_SPLITTER = 134217729.0  # 2**27 + 1, Veltkamp's constant for binary64


def _split(a: float) -> tuple[float, float]:
    c = _SPLITTER * a
    high = c - (c - a)
    return high, a - high


def _two_product(a: float, b: float) -> tuple[float, float]:
    """``a * b`` as an unevaluated sum ``p + e`` with no rounding error (Dekker 1971)."""
    p = a * b
    a_high, a_low = _split(a)
    b_high, b_low = _split(b)
    e = ((a_high * b_high - p) + a_high * b_low + a_low * b_high) + a_low * b_low
    return p, e


def _multiply(x: tuple[float, float], y: tuple[float, float]) -> tuple[float, float]:
    """Double-double product, renormalised so the high part is the rounded value."""
    p, e = _two_product(x[0], y[0])
    e = e + (x[0] * y[1] + x[1] * y[0])
    high = p + e
    return high, e - (high - p)


def power(base: float, exponent: int) -> float:
    """``base ** exponent`` for an integer ``exponent >= 0``, platform-independent.

    Meant for ``|base| <= 1`` (betas, decay rates); far above 1 the exact-product split
    overflows before the result does.

    Bits of the exponent are read from the most significant down: square, then multiply
    by ``base`` for a set bit, each in double-double; the high part is the result.
    """
    if exponent < 0:
        raise ValueError(f"exponent must be >= 0, got {exponent}")
    result = (1.0, 0.0)
    for bit in bin(exponent)[2:]:
        result = _multiply(result, result)
        if bit == "1":
            result = _multiply(result, (base, 0.0))
    return result[0]
