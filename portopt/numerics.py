"""The numerics contract in code: compute dtypes, host scalars, and the namespace rules see.

Rules compute with ``+ - * /``, a correctly rounded ``sqrt``, ``maximum``/``minimum``,
``where`` and comparisons, in one fixed order (docs/numerics.md states the contract). This module
hands them a namespace in which every one of those is correctly rounded on every backend,
and turns host-side Python floats into 0-d arrays of the compute dtype exactly once.
"""

from __future__ import annotations

import functools
import operator
import typing
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

__all__ = [
    "RuleNamespace",
    "compute_dtype",
    "ieee_maximum",
    "ieee_minimum",
    "materialise",
    "scalar_fields",
    "flags_of",
    "HALF_PRECISION_DTYPE_NAMES",
]

# Parameters of these dtypes are updated in float32 and rounded once (docs/numerics.md).
HALF_PRECISION_DTYPE_NAMES = ("float16", "bfloat16")


_Found = typing.TypeVar("_Found")


def _by_namespace_and_dtype(find: Callable[[Any, Any], _Found]) -> Callable[[Any, Any], _Found]:
    """``find(xp, dtype)`` looked up once per namespace and dtype (an unhashable one each time):
    these run for every leaf of every step."""
    cache: dict[tuple[Any, Any], _Found] = {}

    @functools.wraps(find)
    def lookup(xp: Any, dtype: Any) -> _Found:
        try:
            return cache[xp, dtype]
        except KeyError:
            found = cache[xp, dtype] = find(xp, dtype)
            return found
        except TypeError:  # an unhashable namespace or dtype
            return find(xp, dtype)

    return lookup


@_by_namespace_and_dtype
def dtype_name(xp: Any, dtype: Any) -> str:
    """'float32', 'bfloat16', ... for a dtype of any namespace."""
    for name in ("float16", "bfloat16", "float32", "float64"):
        candidate = getattr(xp, name, None)
        if candidate is not None and dtype == candidate:
            return name
    if isinstance(dtype, type):  # a scalar type standing for its dtype (NumPy's int16)
        return dtype.__name__
    return str(dtype).rsplit(".", 1)[-1]


def compute_dtype(xp: Any, dtype: Any) -> Any:
    """The dtype a rule computes in for parameters of ``dtype``: float32 for half precision."""
    if dtype_name(xp, dtype) in HALF_PRECISION_DTYPE_NAMES:
        return xp.float32
    return dtype


def slot_dtype_for(xp: Any, param_dtype: Any, name: str | None) -> Any:
    """The dtype of the state arrays of params of ``param_dtype`` under a rule's
    ``state_dtype`` option ``name`` (None: the compute dtype). NumPy's bfloat16 is ml_dtypes'."""
    if name is None:
        return compute_dtype(xp, param_dtype)
    dtype = getattr(xp, name, None)
    if dtype is None and name == "bfloat16" and _is_numpy(xp):
        try:
            dtype = host_dtype(name)
        except TypeError:
            raise ValueError("state_dtype='bfloat16' on NumPy needs ml_dtypes (pip install ml_dtypes)") from None
    if dtype is None:
        raise ValueError(f"state_dtype={name!r}: this array namespace has no {name}")
    return dtype


def host_dtype(name: str) -> np.dtype:
    """NumPy's dtype of ``name``; bfloat16 is ml_dtypes' (NumPy has none of its own)."""
    if name == "bfloat16":
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError("bfloat16 on NumPy needs ml_dtypes (pip install ml_dtypes)") from None
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


@_by_namespace_and_dtype
def is_real_floating(xp: Any, dtype: Any) -> bool:
    """``xp.isdtype(dtype, "real floating")``, ml_dtypes' bfloat16 included (NumPy's isdtype refuses it)."""
    if dtype_name(xp, dtype) == "bfloat16":
        return True
    try:
        return bool(xp.isdtype(dtype, "real floating"))
    except TypeError:  # a dtype the namespace does not know (another ml_dtypes type)
        return False


def _is_numpy(xp: Any) -> bool:
    return getattr(xp, "__name__", "").split(".")[-1] == "numpy"


def ieee_maximum(xp: Any, x: Any, y: Any) -> Any:
    """IEEE 754-2019 ``maximum``: NaN propagates and ``+0 > -0``.

    NumPy and torch disagree on ``maximum(-0.0, +0.0)`` (each returns one argument by
    position), so the rules get this definition, built from comparisons and ``where``.
    """
    keep_x = (x > y) | (x != x) | ((x == y) & xp.signbit(y))
    return xp.where(keep_x, x, y)


def ieee_minimum(xp: Any, x: Any, y: Any) -> Any:
    """IEEE 754-2019 ``minimum``: NaN propagates and ``-0 < +0``."""
    keep_x = (x < y) | (x != x) | ((x == y) & xp.signbit(x))
    return xp.where(keep_x, x, y)


class RuleNamespace:
    """An array-API namespace with some functions replaced by correctly rounded ones.

    Everything not overridden is the backend's own function. ``raw`` is the namespace
    underneath; ``overridden`` names what was replaced, for reports.
    """

    def __init__(self, raw: Any, overrides: Mapping[str, Callable[..., Any]] | None = None) -> None:
        self.raw = raw
        self._overrides = dict(overrides or {})
        self._overrides.setdefault("maximum", lambda x, y: ieee_maximum(raw, x, y))
        self._overrides.setdefault("minimum", lambda x, y: ieee_minimum(raw, x, y))
        # x rounded to the params' storage dtype and back: the identity where params are stored
        # in the compute dtype (see with_param_storage)
        self._overrides.setdefault("round_like_params", lambda x: x)

    @property
    def overridden(self) -> tuple[str, ...]:
        return tuple(sorted(self._overrides))

    def __getattr__(self, name: str) -> Any:
        overrides = self.__dict__.get("_overrides", {})
        if name in overrides:
            return overrides[name]
        return getattr(self.__dict__["raw"], name)

    def __repr__(self) -> str:
        return f"RuleNamespace({getattr(self.raw, '__name__', self.raw)!r}, overrides={self.overridden})"


def with_param_storage(namespace: RuleNamespace, storage: Any, compute: Any) -> RuleNamespace:
    """``namespace`` for params stored as ``storage`` and computed as ``compute``: its
    ``round_like_params(x)`` rounds ``x`` to ``storage`` (to nearest even) and widens it back, exactly."""
    raw = namespace.raw
    rounding = {**namespace._overrides,
                "round_like_params": lambda x: raw.astype(raw.astype(x, storage), compute)}
    return RuleNamespace(raw, rounding)


def scalar_fields(scalars_type: type) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Positions of the flags (fields annotated ``bool``) and numbers (the others) of a
    rule's host-scalars NamedTuple, e.g. ``AdamScalars``."""
    layout = _LAYOUTS.get(scalars_type)
    if layout is None:
        fields = getattr(scalars_type, "_fields", None)
        if fields is None:
            raise TypeError(f"host scalars must be a NamedTuple, got {scalars_type.__name__}")
        hints = typing.get_type_hints(scalars_type)
        odd = [name for name in fields if hints.get(name) not in (bool, float)]
        if odd:
            raise TypeError(f"{scalars_type.__name__}: every field must be annotated bool (a flag) or float "
                            f"(a number); {', '.join(odd)} is not")
        flags = tuple(i for i, name in enumerate(fields) if hints[name] is bool)
        numbers = tuple(i for i in range(len(fields)) if i not in flags)
        layout = _LAYOUTS[scalars_type] = (flags, numbers)
    return layout


_LAYOUTS: dict[type, tuple[tuple[int, ...], tuple[int, ...]]] = {}


def flags_of(scalars: tuple) -> tuple[bool, ...]:
    """The flag values of host scalars: what a traced kernel's branches depend on."""
    getter = _FLAG_GETTERS.get(type(scalars))
    if getter is None:
        flags, _ = scalar_fields(type(scalars))
        getter = _FLAG_GETTERS[type(scalars)] = _tuple_getter(flags)
    return getter(scalars)


def _tuple_getter(positions: tuple[int, ...]) -> Callable[[tuple], tuple]:
    """``operator.itemgetter`` that always returns a tuple (for none or one position too)."""
    if not positions:
        return lambda values: ()
    if len(positions) == 1:
        position = positions[0]
        return lambda values: (values[position],)
    return operator.itemgetter(*positions)


_FLAG_GETTERS: dict[type, Callable[[tuple], tuple]] = {}


def materialise(xp: Any, scalars: tuple, dtype: Any, device: Any) -> Any:
    """The host scalars with each number a 0-d array of ``dtype`` on ``device``, made once.

    A bare Python float never meets an array (torch would compute float16 with the
    unrounded scalar); flags stay Python bools for the kernel's branches. Returns the same
    NamedTuple type, so the kernel reads ``s.beta1`` either way.
    """
    flags, _ = scalar_fields(type(scalars))
    values = [value if index in flags else xp.asarray(float(value), dtype=dtype, device=device)
              for index, value in enumerate(scalars)]
    return type(scalars)(*values)
