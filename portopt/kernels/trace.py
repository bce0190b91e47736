"""Tracing a rule's elementwise kernel into an expression graph.

The kernel is called once with symbolic arrays and scalars; every operation it performs is
recorded, in order, as a :class:`Node`. Fast paths generate their loops from this graph,
so the math exists in one place only: the kernel. Flags (the ``bool`` fields of the rule's
scalars) are fixed at trace time.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..numerics import scalar_fields

__all__ = ["Node", "Graph", "trace"]

ARITHMETIC = {"add": "+", "sub": "-", "mul": "*", "div": "/"}
COMPARISONS = {"lt": "<", "le": "<=", "gt": ">", "ge": ">=", "eq": "==", "ne": "!="}


class Node:
    """One recorded operation (or an input): ``op`` and its argument nodes."""

    __slots__ = ("op", "args", "name", "index")

    def __init__(self, op: str, args: tuple = (), name: str | None = None) -> None:
        self.op, self.args, self.name = op, args, name
        self.index = -1

    def _binary(self, op: str, other: Any, reflected: bool = False) -> Node:
        if not isinstance(other, Node):
            raise TypeError(
                f"a kernel mixed a bare {type(other).__name__} with an array; host scalars must come from `s`"
            )
        return Node(op, (other, self) if reflected else (self, other))

    def __add__(self, o): return self._binary("add", o)
    def __radd__(self, o): return self._binary("add", o, True)
    def __sub__(self, o): return self._binary("sub", o)
    def __rsub__(self, o): return self._binary("sub", o, True)
    def __mul__(self, o): return self._binary("mul", o)
    def __rmul__(self, o): return self._binary("mul", o, True)
    def __truediv__(self, o): return self._binary("div", o)
    def __rtruediv__(self, o): return self._binary("div", o, True)
    def __lt__(self, o): return self._binary("lt", o)
    def __le__(self, o): return self._binary("le", o)
    def __gt__(self, o): return self._binary("gt", o)
    def __ge__(self, o): return self._binary("ge", o)
    def __eq__(self, o): return self._binary("eq", o)
    def __ne__(self, o): return self._binary("ne", o)
    def __and__(self, o): return self._binary("and", o)
    def __or__(self, o): return self._binary("or", o)
    def __neg__(self): return Node("neg", (self,))
    __hash__ = object.__hash__

    def __bool__(self) -> bool:
        raise TypeError("a kernel branched on an array value; only flags in `s` may be branched on")


class TracingNamespace:
    """The functions a kernel may call, recorded instead of computed."""

    def sqrt(self, x: Node) -> Node:
        return Node("sqrt", (x,))

    def maximum(self, x: Node, y: Node) -> Node:
        return Node("maximum", (x, y))

    def minimum(self, x: Node, y: Node) -> Node:
        return Node("minimum", (x, y))

    def where(self, condition: Node, x: Node, y: Node) -> Node:
        return Node("where", (condition, x, y))

    def signbit(self, x: Node) -> Node:
        return Node("signbit", (x,))

    def abs(self, x: Node) -> Node:
        return Node("abs", (x,))

    def round_like_params(self, x: Node) -> Node:
        return Node("round_param", (x,))

    def __getattr__(self, name: str) -> Any:
        raise TypeError(f"kernels may not call xp.{name} on a fast path; only + - * /, sqrt, maximum, "
                        "minimum, where, signbit, abs, round_like_params and comparisons")


@dataclass
class Graph:
    """A traced kernel: array inputs (p, g, slots), scalar inputs, outputs, and every node in order."""

    arrays: list[Node]
    scalars: dict[str, Node]
    outputs: list[Node]
    nodes: list[Node] = field(default_factory=list)

    @property
    def scalar_names(self) -> list[str]:
        return list(self.scalars)


def trace(kernel: Callable[..., tuple], scalars: Any, slot_count: int) -> Graph:
    """Record ``kernel(xp, s, p, g, *slots)`` for the flags of ``scalars`` (a rule's
    host-scalars NamedTuple; its numbers only name inputs); nodes are numbered in
    evaluation order. A kernel reading a scalar the NamedTuple lacks fails here, naming it."""
    flags, _ = scalar_fields(type(scalars))
    symbolic = type(scalars)(*[value if index in flags else Node("scalar", name=name)
                               for index, (name, value) in enumerate(zip(scalars._fields, scalars))])
    arrays = [Node("input", name=name) for name in ("p", "g", *(f"slot{i}" for i in range(slot_count)))]
    try:
        outputs = list(kernel(TracingNamespace(), symbolic, *arrays))
    except AttributeError as error:
        raise TypeError(f"{getattr(kernel, '__name__', kernel)} read a scalar its "
                        f"{type(scalars).__name__} does not define: {error}") from error
    graph = Graph(arrays, {}, outputs)
    seen: set[int] = set()

    def visit(node: Node) -> None:
        if id(node) in seen:
            return
        seen.add(id(node))
        for argument in node.args:
            visit(argument)
        node.index = len(graph.nodes)
        graph.nodes.append(node)
        if node.op == "scalar" and node.name is not None:
            graph.scalars[node.name] = node

    for output in outputs:
        visit(output)
    return graph
