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

__all__ = ["power", "real_power", "cosine"]

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


_DIGITS = 40  # decimal digits for the transcendental helpers below


def real_power(base: float, exponent: float) -> float:
    """``base ** exponent`` for a real exponent, in 40-digit decimal arithmetic, rounded to a double.

    The decimal module is exact software arithmetic, so every platform gets the same bits
    (C's ``pow`` does not promise that). ``base > 0``.
    """
    import decimal

    if not base > 0:
        raise ValueError(f"base must be > 0, got {base}")
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
