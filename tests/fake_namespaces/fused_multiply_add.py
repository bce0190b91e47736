"""A namespace that contracts a * b + c into one rounding, as an FMA does.

Products are kept unrounded (in long double, or in float64 for float32 and float16, where
they are exact) until they are added or used otherwise; ``a * b + c`` then rounds once.
"""

import numpy as np

from ._core import make_namespace

_wide = {np.dtype(np.float16): np.float64, np.dtype(np.float32): np.float64, np.dtype(np.float64): np.longdouble}
namespace = make_namespace(__name__)
Array = namespace["Array"]


class Product(Array):
    """The rounded product, holding its factors for an add that follows."""

    def __init__(self, x, y):
        super().__init__(np.multiply(x, y))
        self.factors = (x, y)


def _multiply(a, b):
    return Product(a._data, b._data)


_plain_add, _plain_subtract = namespace["add"], namespace["subtract"]


def _fused(a, b, sign):
    x, y = a.factors
    wide = _wide.get(x.dtype, np.longdouble)
    exact = x.astype(wide) * y.astype(wide)
    other = b._data.astype(wide)
    return Array((exact + sign * other).astype(x.dtype))


def _add(a, b):
    if isinstance(a, Product) and a._data.dtype.kind == "f":
        return _fused(a, b, 1)
    if isinstance(b, Product) and b._data.dtype.kind == "f":
        return _fused(b, a, 1)
    return _plain_add(a, b)


namespace.update(multiply=_multiply, add=_add)
globals().update(namespace)
