"""The compiled CPU fast path: one numba loop per traced kernel, generated, never hand-written.

The kernel is traced (portopt.trace) and each node becomes one statement of a
``prange`` loop over the flat arrays, in the traced order. numba compiles with
``fastmath=False``: LLVM then neither contracts ``a*b + c`` into an FMA nor reorders, and
``math.sqrt`` on float32 is the correctly rounded ``vsqrtss`` (the generated code is
inspected for FMA instructions in tests/test_fast_paths.py).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Mapping

import numpy as np

from ..trace import ARITHMETIC, COMPARISONS, Graph, Node, trace

__all__ = ["available", "loop_source", "compiled_loops", "Loops", "PARALLEL_THRESHOLD"]


@functools.lru_cache(maxsize=1)
def available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def _statement(node: Node, name: Callable[[Node], str]) -> str:
    a = [name(arg) for arg in node.args]
    op = node.op
    if op in ARITHMETIC:
        return f"{a[0]} {ARITHMETIC[op]} {a[1]}"
    if op in COMPARISONS:
        return f"{a[0]} {COMPARISONS[op]} {a[1]}"
    if op == "and":
        return f"{a[0]} and {a[1]}"
    if op == "or":
        return f"{a[0]} or {a[1]}"
    if op == "neg":
        return f"-{a[0]}"
    if op == "abs":
        return f"abs({a[0]})"
    if op == "sqrt":
        return f"math.sqrt({a[0]})"
    if op == "signbit":
        return f"math.copysign(1.0, {a[0]}) < 0.0"
    if op == "where":
        return f"{a[1]} if {a[0]} else {a[2]}"
    if op == "maximum":  # IEEE 754-2019: NaN propagates, +0 > -0 (as portopt.numerics.ieee_maximum)
        return (f"{a[0]} if ({a[0]} > {a[1]} or {a[0]} != {a[0]} or "
                f"({a[0]} == {a[1]} and math.copysign(1.0, {a[1]}) < 0.0)) else {a[1]}")
    if op == "minimum":
        return (f"{a[0]} if ({a[0]} < {a[1]} or {a[0]} != {a[0]} or "
                f"({a[0]} == {a[1]} and math.copysign(1.0, {a[0]}) < 0.0)) else {a[1]}")
    raise TypeError(f"no code for traced operation {op!r}")


def loop_source(graph: Graph) -> str:
    """Python source of ``loop(p, g, *slots, *scalars)``, one statement per node."""
    arrays = [node.name for node in graph.arrays]
    scalars = [f"s_{name}" for name in graph.scalar_names]

    def name(node: Node) -> str:
        if node.op == "scalar":
            return f"s_{node.name}"
        return f"v{node.index}"

    lines = [f"def loop({', '.join(arrays + scalars)}):", "    for i in prange(p.shape[0]):"]
    for node in graph.nodes:
        if node.op == "input":
            lines.append(f"        v{node.index} = {node.name}[i]")
        elif node.op != "scalar":
            lines.append(f"        v{node.index} = {_statement(node, name)}")
    for target, output in zip(arrays[:1] + arrays[2:], graph.outputs):
        if output.op == "input" and output.name == target:
            continue  # unchanged
        lines.append(f"        {target}[i] = {name(output)}")
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=None)
def _compile(source: str, parallel: bool) -> Callable:
    import numba

    namespace: dict[str, Any] = {"math": math, "prange": numba.prange if parallel else range}
    exec(compile(source, "<portopt generated loop>", "exec"), namespace)  # noqa: S102 - our own source
    # error_model="numpy": IEEE results for x/0 and sqrt(-x) (the default raises, as Python does).
    compile_loop = numba.njit(parallel=parallel, fastmath=False, error_model="numpy", nogil=True, cache=False)
    return compile_loop(namespace["loop"])


# Below this many elements a loop runs on one thread: starting the pool costs more than it saves.
PARALLEL_THRESHOLD = 1 << 16


class Loops:
    """The generated loop of one kernel (serial and parallel builds) with its scalars ready."""

    def __init__(self, source: str, scalars: list) -> None:
        self.source, self.scalars = source, scalars

    def run(self, p: np.ndarray, g: np.ndarray, slots: list[np.ndarray]) -> None:
        loop = _compile(self.source, p.shape[0] >= PARALLEL_THRESHOLD)
        loop(p, g, *slots, *self.scalars)


def compiled_loops(kernel: Callable, host_values: Mapping[str, Any], slot_count: int, dtype: np.dtype) -> Loops:
    """The loop for ``kernel`` with these flags, its scalar arguments made ``dtype`` values once."""
    flags = tuple(sorted((k, v) for k, v in host_values.items() if isinstance(v, bool)))
    source, scalar_names = _traced(kernel, flags, tuple(sorted(host_values)), slot_count)
    return Loops(source, [dtype.type(host_values[name]) for name in scalar_names])


@functools.lru_cache(maxsize=None)
def _traced(kernel: Callable, flags: tuple, names: tuple, slot_count: int) -> tuple[str, list[str]]:
    values = {name: 0.0 for name in names}
    values.update(dict(flags))
    graph = trace(kernel, values, slot_count)
    return loop_source(graph), graph.scalar_names
