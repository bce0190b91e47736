"""Nested containers of arrays: flatten to a list of leaves and rebuild.

A tree is one array, or a dict / list / tuple whose values are trees. Dict keys are
visited in insertion order, so two trees built the same way flatten the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

__all__ = ["TreeDef", "flatten", "unflatten", "tree_map", "leaf_paths"]


@dataclass(frozen=True)
class TreeDef:
    """The shape of a tree without its leaves: ``kind`` is 'leaf', 'dict', 'list' or 'tuple'."""

    kind: str
    keys: tuple = ()
    children: tuple["TreeDef", ...] = ()

    @property
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
    iterator = iter(leaves)
    tree = _build(treedef, iterator)
    if next(iterator, _END) is not _END:
        raise ValueError("unflatten: more leaves than the tree definition holds")
    return tree


_END = object()


def _build(treedef: TreeDef, iterator) -> Any:
    if treedef.kind == "leaf":
        leaf = next(iterator, _END)
        if leaf is _END:
            raise ValueError("unflatten: fewer leaves than the tree definition holds")
        return leaf
    children = [_build(child, iterator) for child in treedef.children]
    if treedef.kind == "dict":
        return dict(zip(treedef.keys, children))
    return children if treedef.kind == "list" else tuple(children)


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
