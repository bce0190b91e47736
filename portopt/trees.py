"""Nested containers of arrays: flatten to a list of leaves and rebuild.

A tree is one array, or a dict / list / tuple whose values are trees. Dict keys are
visited in insertion order, so two trees built the same way flatten the same way.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["TreeDef", "flatten", "unflatten", "tree_map", "leaf_paths", "collector", "builder"]


@dataclass(frozen=True)
class TreeDef:
    """The shape of a tree without its leaves: ``kind`` is 'leaf', 'dict', 'list' or 'tuple'."""

    kind: str
    keys: tuple = ()
    children: tuple[TreeDef, ...] = ()

    def __hash__(self) -> int:  # kept: trees key caches that are looked up on every step
        value = self.__dict__.get("_hash")
        if value is None:
            value = hash((self.kind, self.keys, self.children))
            object.__setattr__(self, "_hash", value)
        return value

    @functools.cached_property
    def num_leaves(self) -> int:
        if self.kind == "leaf":
            return 1
        return sum(child.num_leaves for child in self.children)

    def describe(self) -> str:
        if self.kind == "leaf":
            return "*"
        inner = ", ".join(
            f"{key!r}: {child.describe()}" if self.kind == "dict" else child.describe()
            for key, child in zip(self.keys, self.children)
        )
        return {"dict": "{%s}", "list": "[%s]", "tuple": "(%s)"}[self.kind] % inner


def flatten(tree: Any) -> tuple[list, TreeDef]:
    """Leaves of ``tree`` in a fixed order, and its structure."""
    leaves: list = []
    return leaves, _flatten_into(tree, leaves)


def _flatten_into(tree: Any, leaves: list) -> TreeDef:
    if isinstance(tree, dict):
        keys = tuple(tree.keys())
        return TreeDef("dict", keys, tuple(_flatten_into(tree[k], leaves) for k in keys))
    if isinstance(tree, (list, tuple)) and not hasattr(tree, "_fields"):
        kind = "list" if isinstance(tree, list) else "tuple"
        return TreeDef(kind, tuple(range(len(tree))), tuple(_flatten_into(x, leaves) for x in tree))
    leaves.append(tree)
    return TreeDef("leaf")


def unflatten(treedef: TreeDef, leaves: Sequence) -> Any:
    """Inverse of :func:`flatten`."""
    if len(leaves) != treedef.num_leaves:
        which = "fewer" if len(leaves) < treedef.num_leaves else "more"
        raise ValueError(f"unflatten: {which} leaves ({len(leaves)}) than the tree definition holds "
                         f"({treedef.num_leaves})")
    return builder(treedef)(leaves)


_CONTAINERS = (dict, list, tuple)


@functools.lru_cache(maxsize=256)
def collector(treedef: TreeDef) -> Callable[[Any], list | None]:
    """A function ``tree -> leaves`` for trees of structure ``treedef`` (None for any other
    structure), generated once per structure: straight-line code, no recursion, because it
    runs for params, grads and every slot on every step."""
    lines = ["def collect(tree):"]
    names: list[str] = []
    constants: dict[str, Any] = {"_CONTAINERS": _CONTAINERS}
    counter = iter(range(1 << 30))

    def visit(node: TreeDef, expression: str) -> None:
        variable = f"t{next(counter)}"
        lines.append(f"    {variable} = {expression}")
        if node.kind == "leaf":
            lines.append(f"    if isinstance({variable}, _CONTAINERS) and not hasattr({variable}, '_fields'): "
                         "return None")
            names.append(variable)
            return
        if node.kind == "dict":
            keys = f"keys_{variable}"
            constants[keys] = node.keys
            lines.append(f"    if type({variable}) is not dict or tuple({variable}) != {keys}: return None")
        else:
            kind = "list" if node.kind == "list" else "tuple"
            lines.append(f"    if type({variable}) is not {kind} or len({variable}) != {len(node.children)}: return None")
        for position, child in enumerate(node.children):
            index = f"{keys}[{position}]" if node.kind == "dict" else str(position)
            visit(child, f"{variable}[{index}]")

    visit(treedef, "tree")
    lines.append(f"    return [{', '.join(names)}]")
    namespace = dict(constants)
    exec(compile("\n".join(lines), f"<portopt tree {treedef.describe()[:60]}>", "exec"), namespace)  # noqa: S102
    return namespace["collect"]


@functools.lru_cache(maxsize=256)
def builder(treedef: TreeDef) -> Callable[[Sequence], Any]:
    """A function ``leaves -> tree`` for ``treedef``, generated once per structure (see :func:`collector`)."""
    counter = iter(range(1 << 30))
    constants: dict[str, Any] = {}

    def expression(node: TreeDef) -> str:
        if node.kind == "leaf":
            return f"leaves[{next(counter)}]"
        items = [expression(child) for child in node.children]
        if node.kind == "dict":
            keys = f"keys{len(constants)}"
            constants[keys] = node.keys
            return "{" + ", ".join(f"{keys}[{k}]: {item}" for k, item in enumerate(items)) + "}"
        if node.kind == "list":
            return "[" + ", ".join(items) + "]"
        return "(" + "".join(f"{item}, " for item in items) + ")"

    source = f"def build(leaves):\n    return {expression(treedef)}\n"
    exec(compile(source, f"<portopt tree {treedef.describe()[:60]}>", "exec"), constants)  # noqa: S102
    return constants["build"]


def tree_map(fn: Callable[[Any], Any], tree: Any) -> Any:
    leaves, treedef = flatten(tree)
    return unflatten(treedef, [fn(leaf) for leaf in leaves])


def leaf_paths(treedef: TreeDef, prefix: str = "") -> list[str]:
    """A readable path per leaf, e.g. ``['w']``, ``[0][1]``; the bare leaf is ``''``."""
    if treedef.kind == "leaf":
        return [prefix]
    paths: list[str] = []
    for key, child in zip(treedef.keys, treedef.children):
        paths.extend(leaf_paths(child, f"{prefix}[{key!r}]"))
    return paths
