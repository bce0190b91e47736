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


def _multiply(x: tuple[float, float], y: tuple[float, float]) -> tuple[float, float]:
    """Double-double product, renormalised so the high part is the rounded value.

    The high parts' product is exact as ``p + e`` (Dekker 1971: Veltkamp's split of each
    factor, then the partial products), the cross terms are added to ``e``, and the sum is
    renormalised. Written out in one function: it runs once per step for every power.
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
    first, each product in double-double; the high part is the result. Written as a
    recursion (``x^e = (x^(e/2))²`` for even ``e``, ``x^(e-1) · x`` for odd) on remembered
    powers, so a run of consecutive exponents (one per step) costs about one product each,
    not ``log2(e)``: the products, and so the bits, are those of the loop.
    """
    memo = _MEMO.get(base)
    if memo is not None and type(exponent) is int and exponent > 0:  # the common case first
        value = memo.get(exponent)
        if value is None:
            value = _next_power(memo, base, exponent)
        if value is not None:
            if len(memo) > 4096:
                _prune(memo, exponent)
            return value[0]
    if isinstance(exponent, bool) or not isinstance(exponent, int) or exponent < 0:
        raise ValueError(f"exponent must be >= 0 and an int, got {exponent!r}")
    if base == 0.0 or base != base:  # ±0 (the sign of 0 must survive) and NaN: the loop, unremembered
        return _power_loop(base, exponent)
    memo = _MEMO.get(base)
    if memo is None:
        if len(_MEMO) > 64:
            _MEMO.clear()
        memo = _MEMO[base] = {0: (1.0, 0.0)}
    value = memo.get(exponent)
    if value is None:
        previous = memo.get(exponent - 1) if exponent & 1 else None
        if previous is not None:  # the common case: the step after the last one
            value = memo[exponent] = _multiply(previous, (base, 0.0))
        else:
            value = _power_of(base, exponent, memo)
    result = value[0]
    if len(memo) > 4096:  # every exponent of a 1000-step run stays (the conformance suite's)
        _prune(memo, exponent)
    return result


def _next_power(memo: dict[int, tuple[float, float]], base: float, exponent: int) -> tuple[float, float] | None:
    """``base ** exponent`` from remembered powers in one or two products (those of
    :func:`_power_of`: ``x^(e-1) · x`` for odd ``e``, ``(x^(e/2))²`` for even, the half made from
    the power below it if need be), remembered; None where they are not there. A run of
    consecutive exponents, one per step, always finds them."""
    if exponent & 1:
        below = memo.get(exponent - 1)
        if below is None:
            return None
        value = memo[exponent] = _multiply(below, (base, 0.0))
        return value
    half_exponent = exponent >> 1
    half = memo.get(half_exponent)
    if half is None:
        below = memo.get(half_exponent - 1) if half_exponent & 1 else None
        if below is None:
            return None
        half = memo[half_exponent] = _multiply(below, (base, 0.0))
    value = memo[exponent] = _multiply(half, half)
    return value


def _power_loop(base: float, exponent: int) -> float:
    result = (1.0, 0.0)
    for bit in bin(exponent)[2:]:
        result = _multiply(result, result)
        if bit == "1":
            result = _multiply(result, (base, 0.0))
    return result[0]


# Remembered double-double powers, per base: {exponent: (high, low)}.
_MEMO: dict[float, dict[int, tuple[float, float]]] = {}


def _power_of(base: float, exponent: int, memo: dict[int, tuple[float, float]]) -> tuple[float, float]:
    # The loop squares the result for each bit and multiplies by base where the bit is 1:
    # after the bits of e it holds (x^(e>>1))² for even e and that times x for odd e, the
    # latter being x^(e-1) · x. Same products, same order.
    value = memo.get(exponent)
    if value is None:
        if exponent & 1:
            value = _multiply(_power_of(base, exponent - 1, memo), (base, 0.0))
        else:
            half = _power_of(base, exponent >> 1, memo)
            value = _multiply(half, half)
        memo[exponent] = value
    return value


def _prune(memo: dict[int, tuple[float, float]], exponent: int) -> None:
    """Keep only the powers the next exponents will ask for: those near ``exponent >> j``."""
    keep = {0}
    while exponent:
        keep.update((exponent - 1, exponent, exponent + 1))
        exponent >>= 1
    for key in [key for key in memo if key not in keep]:
        del memo[key]


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
