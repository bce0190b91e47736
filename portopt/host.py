"""Host-side scalar arithmetic that gives the same bits on every platform.

Python's ``float ** int`` calls the C library's ``pow``, which is not correctly rounded
and differs between platforms by an ulp now and then. Bias corrections use
:func:`power` instead: binary exponentiation with IEEE double multiplications only, so
the result depends on nothing but IEEE 754.
"""

from __future__ import annotations

__all__ = ["power"]


def power(base: float, exponent: int) -> float:
    """``base ** exponent`` for an integer ``exponent >= 0`` by square-and-multiply.

    Bits of the exponent are read from the most significant down: ``r = r*r`` then, for
    a set bit, ``r = r*base``. Every operation is one correctly rounded multiplication.
    """
    if exponent < 0:
        raise ValueError(f"exponent must be >= 0, got {exponent}")
    result = 1.0
    for bit in bin(exponent)[2:]:
        result = result * result
        if bit == "1":
            result = result * base
    return result
