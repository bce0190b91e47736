"""A small array API namespace over NumPy whose elementwise functions can be replaced.

``make_namespace(name, **replacements)`` returns the functions and dtypes of a namespace
module; its ``Array`` wraps a NumPy array, and every operator goes through the namespace's
function of the same name, so a replaced ``multiply`` is what ``a * b`` computes too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import numpy as np


def make_namespace(module_name: str, **replacements: Callable[..., np.ndarray]) -> dict[str, Any]:
    functions: dict[str, Any] = {}

    class Array:
        __array_priority__ = 1000

        def __init__(self, data: Any) -> None:
            self._data = np.asarray(data)

        def __array_namespace__(self, api_version: Any = None) -> Any:
            return sys.modules[module_name]

        # attributes
        shape = property(lambda self: self._data.shape)
        dtype = property(lambda self: self._data.dtype)
        ndim = property(lambda self: self._data.ndim)
        size = property(lambda self: self._data.size)
        device = property(lambda self: "cpu")
        T = property(lambda self: Array(self._data.T))
        mT = property(lambda self: Array(np.swapaxes(self._data, -1, -2)))

        def to_device(self, device: Any, stream: Any = None) -> Array:
            return self

        def __dlpack__(self, **kwargs: Any) -> Any:
            return self._data.__dlpack__(**kwargs)

        def __dlpack_device__(self) -> Any:
            return self._data.__dlpack_device__()

        def __getitem__(self, key: Any) -> Array:
            return Array(self._data[_raw(key)])

        def __setitem__(self, key: Any, value: Any) -> None:
            self._data[_raw(key)] = _raw(value)

        def __bool__(self) -> bool:
            return bool(self._data)

        def __float__(self) -> float:
            return float(self._data)

        def __repr__(self) -> str:
            return f"{module_name}.Array({self._data!r})"

    def binary(name: str) -> Callable:
        def method(self: Array, other: Any) -> Array:
            return functions[name](self, _wrap(other))

        def reflected(self: Array, other: Any) -> Array:
            return functions[name](_wrap(other), self)

        return method, reflected

    for operator, name in (("add", "add"), ("sub", "subtract"), ("mul", "multiply"), ("truediv", "divide"),
                           ("lt", "less"), ("le", "less_equal"), ("gt", "greater"), ("ge", "greater_equal"),
                           ("eq", "equal"), ("ne", "not_equal"), ("and", "logical_and"), ("or", "logical_or")):
        method, reflected = binary(name)
        setattr(Array, f"__{operator}__", method)
        setattr(Array, f"__r{operator}__", reflected)
    Array.__neg__ = lambda self: functions["negative"](self)
    Array.__abs__ = lambda self: functions["abs"](self)
    Array.__hash__ = None  # type: ignore[assignment]

    def _wrap(x: Any) -> Array:
        return x if isinstance(x, Array) else Array(x)

    def _raw(x: Any) -> Any:
        if isinstance(x, Array):
            return x._data
        if isinstance(x, tuple):
            return tuple(_raw(k) for k in x)
        return x

    def elementwise(numpy_function: Callable) -> Callable:
        return lambda *arrays: Array(numpy_function(*(_raw(a) for a in arrays)))

    for name in ("add", "subtract", "multiply", "divide", "negative", "abs", "sqrt", "maximum", "minimum", "less",
                 "less_equal", "greater", "greater_equal", "equal", "not_equal", "logical_and", "logical_or",
                 "isfinite", "isnan", "signbit"):
        numpy_function = replacements.get(name, getattr(np, name))
        functions[name] = elementwise(numpy_function)

    def asarray(obj: Any, dtype: Any = None, device: Any = None, copy: Any = None) -> Array:
        data = _raw(obj)
        return Array(np.array(data, dtype=dtype, copy=True) if copy or not isinstance(data, np.ndarray)
                     else np.asarray(data, dtype=dtype))

    functions.update(
        Array=Array,
        asarray=asarray,
        astype=lambda x, dtype, copy=True, device=None: Array(_raw(x).astype(dtype)),
        where=lambda condition, x, y: Array(np.where(_raw(condition), _raw(_wrap(x)), _raw(_wrap(y)))),
        all=lambda x, axis=None, keepdims=False: Array(np.all(_raw(x), axis=axis, keepdims=keepdims)),
        full=lambda shape, value, dtype=None, device=None: Array(np.full(shape, value, dtype=dtype)),
        zeros=lambda shape, dtype=None, device=None: Array(np.zeros(shape, dtype=dtype)),
        empty=lambda shape, dtype=None, device=None: Array(np.empty(shape, dtype=dtype)),
        reshape=lambda x, shape, copy=None: Array(np.reshape(_raw(x), shape)),
        concat=lambda arrays, axis=0: Array(np.concatenate([_raw(a) for a in arrays], axis=axis)),
        permute_dims=lambda x, axes: Array(np.transpose(_raw(x), axes)),
        isdtype=lambda dtype, kind: _isdtype(dtype, kind),
        float16=np.dtype(np.float16), float32=np.dtype(np.float32), float64=np.dtype(np.float64),
        bool=np.dtype(np.bool_), int64=np.dtype(np.int64), complex64=np.dtype(np.complex64),
        complex128=np.dtype(np.complex128), __array_api_version__="2023.12",
    )
    return functions


def _isdtype(dtype: Any, kind: Any) -> bool:
    if isinstance(kind, tuple):
        return any(_isdtype(dtype, k) for k in kind)
    dtype = np.dtype(dtype)
    if kind == "real floating":
        return dtype.kind == "f"
    if kind == "complex floating":
        return dtype.kind == "c"
    if kind == "bool":
        return dtype.kind == "b"
    if kind in ("integral", "signed integer", "unsigned integer"):
        return dtype.kind in {"integral": "iu", "signed integer": "i", "unsigned integer": "u"}[kind]
    if kind == "numeric":
        return dtype.kind in "iufc"
    return dtype == np.dtype(kind)


def one_ulp_up(function: Callable) -> Callable:
    """``function``'s result moved one ulp towards +inf wherever it is finite and not zero."""
    def wrong(*arrays: np.ndarray) -> np.ndarray:
        result = np.asarray(function(*arrays))
        with np.errstate(all="ignore"):
            return np.where(np.isfinite(result) & (result != 0), np.nextafter(result, np.inf), result)
    return wrong


def flushing(function: Callable) -> Callable:
    """``function`` with subnormal inputs and results flushed to zero (as -ftz does)."""
    def flush(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype.kind != "f":
            return x
        tiny = np.finfo(x.dtype).tiny
        return np.where(np.abs(x) < tiny, np.copysign(np.zeros_like(x), x), x)

    return lambda *arrays: flush(function(*(flush(a) for a in arrays)))
