"""The primitive tier: each backend's operations against exact results (conformance/exact.py).

Rules can only agree if the operations under them are correctly rounded. Every operation
the rules use is run on random values and on special ones (±0, subnormals, ±inf, NaN,
values near overflow), twice per backend: on the backend's own namespace ("raw") and on
the namespace portopt hands its rules ("portopt"). A defect shows as raw failures; a
working substitute as zero portopt failures next to them.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from portopt.backends import adapter_for
from portopt.numerics import host_dtype

from . import exact
from .digests import canonical, hex_bits
from .exceptions import known_primitive_exception
from .generator import special_values, splitmix64

__all__ = ["PrimitiveResult", "run_primitives", "print_primitive_table", "OPERATIONS"]

DTYPES = ("float16", "float32", "float64")  # the dtypes rules compute in (and float16's operations)
# bfloat16 is never computed in (a rule widens it to float32): only its conversions are checked
CAST_ONLY_DTYPES = ("bfloat16",)
RANDOM_COUNT = 3000


@dataclass
class PrimitiveResult:
    target: str
    namespace: str  # "raw" or "portopt"
    operation: str
    dtype: str
    wrong: int
    total: int
    example: str = ""
    known: str | None = None  # the documented reason, where this is a known exception

    @property
    def failed_on_portopt(self) -> bool:
        return self.namespace == "portopt" and self.wrong > 0 and self.known is None

    def as_dict(self) -> dict:
        return dict(self.__dict__)


# name -> (arity, exact reference on Python floats, how to run it on a namespace)
OPERATIONS: dict[str, tuple[int, Callable, Callable]] = {
    "x + y": (2, exact.add, lambda xp, x, y: x + y),
    "x - y": (2, exact.subtract, lambda xp, x, y: x - y),
    "x * y": (2, exact.multiply, lambda xp, x, y: x * y),
    "x / y": (2, exact.divide, lambda xp, x, y: x / y),
    "-x": (1, lambda x, fmt: -x, lambda xp, x: -x),
    "sqrt": (1, exact.sqrt, lambda xp, x: xp.sqrt(x)),
    "maximum": (2, exact.maximum, lambda xp, x, y: xp.maximum(x, y)),
    "minimum": (2, exact.minimum, lambda xp, x, y: xp.minimum(x, y)),
    "where(x < y, x, y)": (2, lambda x, y, fmt: x if x < y else y, lambda xp, x, y: xp.where(x < y, x, y)),
    "x * y + z": (3, lambda x, y, z, fmt: exact.add(exact.multiply(x, y, fmt), z, fmt),
                  lambda xp, x, y, z: x * y + z),  # two roundings: a backend that fuses them into an FMA fails
    "add(x, y)": (2, exact.add, lambda xp, x, y: xp.add(x, y)),
    "subtract(x, y)": (2, exact.subtract, lambda xp, x, y: xp.subtract(x, y)),
    "multiply(x, y)": (2, exact.multiply, lambda xp, x, y: xp.multiply(x, y)),
    "divide(x, y)": (2, exact.divide, lambda xp, x, y: xp.divide(x, y)),
    "negative(x)": (1, lambda x, fmt: -x, lambda xp, x: xp.negative(x)),
    "x == y": (2, lambda x, y, fmt: x == y, lambda xp, x, y: x == y),
    "x < y": (2, lambda x, y, fmt: x < y, lambda xp, x, y: x < y),
    "x <= y": (2, lambda x, y, fmt: x <= y, lambda xp, x, y: x <= y),
    "x != y": (2, lambda x, y, fmt: x != y, lambda xp, x, y: x != y),
}

# Casts the rules use: half precision to float32 and back; host floats to each dtype.
CASTS = (("float16", "float32"), ("float32", "float16"), ("float64", "float32"), ("float64", "float16"),
         ("bfloat16", "float32"), ("float32", "bfloat16"))


def _next_up(x: np.ndarray) -> np.ndarray:
    """``nextafter(x, +inf)`` (by the bits for bfloat16, which NumPy's nextafter does not take)."""
    if x.dtype.name != "bfloat16":
        return np.nextafter(x, np.array(np.inf, dtype=x.dtype))
    bits = x.view(np.uint16).astype(np.int32)
    finite = np.isfinite(x.astype(np.float32))
    negative = (bits & 0x8000) != 0
    up = np.where(negative, np.where(bits == 0x8000, 1, bits - 1), bits + 1)
    return np.where(finite, up, bits).astype(np.uint16).view(x.dtype)


def _random_values(dtype: str, count: int, stream: int) -> np.ndarray:
    """Uniformly random bit patterns (all exponents, NaN and inf included) plus the specials."""
    np_dtype = host_dtype(dtype)
    words = splitmix64(np.arange(count, dtype=np.uint64) + np.uint64(stream << 32))
    bits = words.astype({2: np.uint16, 4: np.uint32, 8: np.uint64}[np_dtype.itemsize])
    random = bits.view(np_dtype)
    specials = np.concatenate([special_values(np_dtype), np.array([np.inf, -np.inf, np.nan], dtype=np_dtype)])
    return np.concatenate([specials, random])


@functools.cache
def _inputs(dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """Operand pairs: every pair of specials, random pairs, and pairs a few ulps apart."""
    xs = _random_values(dtype, RANDOM_COUNT, 1)
    ys = _random_values(dtype, RANDOM_COUNT, 2)
    specials = len(special_values(host_dtype(dtype))) + 3
    sx, sy = np.meshgrid(xs[:specials], xs[:specials])
    near = _next_up(xs[specials:])
    x = np.concatenate([sx.ravel(), xs[specials:], xs[specials:]])
    y = np.concatenate([sy.ravel(), ys[specials:], near])
    return x, y


@functools.cache
def _addends(dtype: str) -> np.ndarray:
    """The third operands of ``x * y + z``: half random, half minus the rounded product, where
    two roundings give exactly 0 and a fused multiply-add gives the product's rounding error."""
    x, y = _inputs(dtype)
    with np.errstate(all="ignore"):
        products = -(x * y)
    z = _random_values(dtype, len(x), 3)[:len(x)]
    return np.where(np.arange(len(x)) % 2 == 0, products, z).astype(dtype)


def _operands(arity: int, dtype: str) -> tuple[np.ndarray, ...]:
    x, y = _inputs(dtype)
    return ((x,), (x, y), (x, y, _addends(dtype)))[arity - 1]


@functools.cache
def _expected(operation: str, dtype: str) -> np.ndarray:
    arity, reference, _ = OPERATIONS[operation]
    fmt = exact.FORMATS[dtype]
    with np.errstate(all="ignore"):
        values = [reference(*(float(v) for v in operands), fmt) for operands in zip(*_operands(arity, dtype))]
    result_dtype = bool if isinstance(values[0], bool) else dtype
    return np.array(values, dtype=result_dtype)


def _near_ties(x: np.ndarray, destination: str) -> np.ndarray:
    """float32 inputs moved onto (and one bit either side of) the halfway points of a narrowing
    to ``destination``, where round-to-nearest-even decides: random bits rarely land there."""
    dropped = {"float16": 13, "bfloat16": 16}.get(destination)
    if x.dtype != np.float32 or dropped is None:
        return x[:0]
    kept = x.view(np.uint32) & np.uint32(~((1 << dropped) - 1) & 0xFFFFFFFF)
    half = np.uint32(1 << (dropped - 1))
    return np.concatenate([kept | half, kept | (half - np.uint32(1)), kept | (half + np.uint32(1))]).view(np.float32)


@functools.cache
def _expected_cast(source: str, destination: str) -> tuple[np.ndarray, np.ndarray]:
    x, _ = _inputs(source)
    x = np.concatenate([x, _near_ties(x, destination)])
    fmt = exact.FORMATS[destination]
    return x, np.array([exact.convert(float(a), fmt) for a in x], dtype=host_dtype(destination))


def _compare(expected: np.ndarray, got: np.ndarray, inputs: tuple[np.ndarray, ...]) -> tuple[int, str]:
    if expected.dtype == bool:
        wrong = np.flatnonzero(expected != got.astype(bool))
    else:
        # NaN payload and sign are not compared (see digests.canonical); every other bit is.
        e, g = canonical(expected), canonical(got)
        wrong = np.flatnonzero(e.view(f"u{e.dtype.itemsize}") != g.view(f"u{g.dtype.itemsize}"))
    if not len(wrong):
        return 0, ""
    i = int(wrong[0])
    operands = ", ".join(f"{float(a[i])!r} (0x{hex_bits(a[i:i + 1])[0]})" for a in inputs)
    return len(wrong), f"({operands}) -> expected {expected[i]!r}, got {got[i]!r}"


def _run_on(target: Any, namespace: Any, label: str, kind: str, dtypes: tuple[str, ...]) -> list[PrimitiveResult]:
    results = []
    with np.errstate(all="ignore"):
        for dtype in (d for d in dtypes if d in DTYPES):
            for operation, (arity, _reference, run) in OPERATIONS.items():
                hosts = _operands(arity, dtype)
                expected = _expected(operation, dtype)
                try:
                    got = target.to_numpy(run(namespace, *(target.asarray(h) for h in hosts)))
                    wrong, example = _compare(expected, got, hosts)
                except Exception as error:  # the backend does not support this op in this dtype
                    wrong, example = len(expected), f"raised {type(error).__name__}: {error}"[:300]
                results.append(PrimitiveResult(label, kind, operation, dtype, wrong, len(expected), example,
                                               known_primitive_exception(label, dtype)))
        for source, destination in CASTS:
            if source not in dtypes or destination not in dtypes:
                continue
            host, expected = _expected_cast(source, destination)
            cast_to = getattr(namespace, destination, None) or host_dtype(destination)  # NumPy: ml_dtypes' bfloat16
            got = target.to_numpy(namespace.astype(target.asarray(host), cast_to))
            wrong, example = _compare(expected, got, (host,))
            results.append(PrimitiveResult(label, kind, f"astype {source}->{destination}", destination,
                                           wrong, len(expected), example,
                                           known_primitive_exception(label, destination)))
    return results


def run_primitives(targets: dict[str, Any], dtypes: tuple[str, ...] = DTYPES + CAST_ONLY_DTYPES) -> list[PrimitiveResult]:
    """Every operation on every target (in ``dtypes``), raw and through portopt's rule namespace."""
    results = []
    for label, target in targets.items():
        adapter = adapter_for(target.xp)
        probe = target.asarray(np.zeros(1, np.float32))
        portopt_namespace = adapter.rule_namespace(adapter.device(probe))
        here = tuple(d for d in DTYPES + CAST_ONLY_DTYPES if d in target.dtypes and d in dtypes)
        results += _run_on(target, target.xp, label, "raw", here)
        results += _run_on(target, portopt_namespace, label, "portopt", here)
    return results


def print_primitive_table(results: list[PrimitiveResult], out=None) -> None:
    """Wrong results per operation and dtype, raw namespace / portopt's namespace."""
    out = out or sys.stdout
    print("Primitives against exact results (wrong elements: raw namespace / portopt's namespace)", file=out)
    by_key = {(r.target, r.operation, r.dtype, r.namespace): r for r in results}
    targets = sorted({r.target for r in results})
    operations = list(dict.fromkeys(r.operation for r in results))
    for target in targets:
        print(f"  {target}", file=out)
        for operation in operations:
            cells = []
            for dtype in DTYPES + CAST_ONLY_DTYPES:
                raw, ours = by_key.get((target, operation, dtype, "raw")), by_key.get((target, operation, dtype, "portopt"))
                if raw is None or ours is None:
                    continue
                cells.append(f"{dtype} {raw.wrong}/{ours.wrong}")
            if cells:
                print(f"    {operation:<24} " + "   ".join(f"{c:<18}" for c in cells), file=out)
    defects = [r for r in results if r.wrong]
    for r in defects:
        ours = by_key.get((r.target, r.operation, r.dtype, "portopt"))
        if r.namespace == "raw" and ours is not None and ours.wrong == 0:
            print(f"  replaced: {r.target}'s own {r.operation} {r.dtype} is wrong on {r.wrong}/{r.total}, e.g. "
                  f"{r.example}; portopt's namespace substitutes a correctly rounded one (0 wrong)", file=out)
            continue
        print(f"  defect: {r.target} [{r.namespace}] {r.operation} {r.dtype}: {r.wrong}/{r.total} wrong, "
              f"e.g. {r.example}" + (" (known exception)" if r.known else ""), file=out)
    for reason in sorted({r.known for r in defects if r.known}):
        print(f"  {reason}", file=out)
