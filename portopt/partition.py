"""Different rules on different leaves of one tree: ``partition`` and ``masked``.

``partition({"decay": AdamW(...), "no_decay": Adam(...)}, labels)`` runs each rule on the
leaves its label marks, as a separate optimizer on that part of the tree would (the parts
are lists of leaves in tree order; the bits are exactly those of separate optimizers).
A label mapped to ``None`` marks leaves left untouched, with no state. ``masked(rule,
mask)`` is the partition ``{True: rule, False: None}`` of a boolean mask tree.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .backends import adapter_for
from .checkpoint import PARTITION_FORMAT
from .checks import Leaves, check_params
from .optimizer import Rule
from .plan import _check_no_shared_memory, _Spans, interrupts_deferred
from .state import counter_leaf, python_int, register_composite
from .trees import TreeDef, flatten, leaf_paths, unflatten

__all__ = ["Partition", "PartitionState", "partition", "masked"]



@dataclass
class PartitionState:
    """One state per label that has leaves (``parts``, a State or a nested PartitionState);
    ``step`` counts the partition's steps."""

    rule: str
    step: int
    parts: dict[str, Any] = field(default_factory=dict)


@functools.lru_cache(maxsize=64)  # per tree structure: looked up on every step
def _sorted_key_rank(treedef: TreeDef) -> tuple[int, ...]:
    """Each leaf's place when dicts are walked in sorted key order (as JAX flattens them), so a
    part's leaves, its state and its whole-tree sums are in one order eagerly and under jax.jit
    whatever the order of the params' dict keys."""
    order: list[int] = []

    def walk(node: TreeDef, first: int) -> int:
        if node.kind == "leaf":
            order.append(first)
            return first + 1
        starts, position = [], first
        for child in node.children:
            starts.append(position)
            position += child.num_leaves
        children = list(range(len(node.children)))
        if node.kind == "dict":
            try:
                children.sort(key=lambda k: node.keys[k])
            except TypeError:  # keys that do not compare: their own order (JAX refuses such dicts)
                pass
        for k in children:
            walk(node.children[k], starts[k])
        return position

    walk(treedef, 0)
    rank = [0] * len(order)
    for place, leaf in enumerate(order):
        rank[leaf] = place
    return tuple(rank)


def _in_order_of(tree: Any, params: Any) -> Any:
    """``tree`` with each dict that has the same keys as params' dict there in params' key order
    (labels go by key: JAX hands a jitted function its dicts with sorted keys)."""
    if isinstance(tree, dict) and isinstance(params, dict) and tree.keys() == params.keys():
        return {key: _in_order_of(tree[key], params[key]) for key in params}
    if isinstance(tree, (list, tuple)) and isinstance(params, (list, tuple)) and len(tree) == len(params):
        return type(tree)(_in_order_of(t, p) for t, p in zip(tree, params))
    return tree


def _flatten_state(state: PartitionState) -> tuple[tuple, tuple]:
    return (state.parts, counter_leaf(state.step)), (state.rule,)


def _unflatten_state(static: tuple, children: tuple) -> PartitionState:
    parts, step = children
    return PartitionState(rule=static[0], step=python_int(step), parts=parts)


register_composite(PartitionState, _flatten_state, _unflatten_state)  # a JAX pytree, as State is


def _part_slots(state: PartitionState, names: list[str]) -> list[tuple[str, Any]]:
    """Every slot array of the stepped parts, by name: a step writes them too, so none may share
    memory with a param or slot of another part (a part's own are its step's to check; a part
    whose state is malformed is left to its check)."""
    named = []
    for name in names:
        part = state.parts.get(name)
        slots = getattr(part, "slots", None)
        if not isinstance(slots, dict):
            continue
        for slot, tree in slots.items():
            for position, x in enumerate(flatten(tree)[0]):
                named.append((f"state.parts[{name!r}].slots[{slot!r}][{position}]", x))
    return named


class _Planned:
    """The checked steps of every part, written together by :meth:`apply`."""

    def __init__(self, state: PartitionState, parts: list) -> None:
        self.state, self.parts = state, parts

    def apply(self) -> None:
        with interrupts_deferred(len(self.parts) > 1):
            for part in self.parts:
                part.apply()
            self.state.step += 1


class Partition:
    """Each rule of ``rules`` on the leaves ``labels`` gives its label (see the module)."""

    def __init__(self, rules: Mapping[Any, Rule | Partition | None], labels: Any, name: str = "partition") -> None:
        if not isinstance(rules, Mapping) or not rules:
            raise TypeError(f"rules must be a non-empty dict {{label: rule or None}}, got {type(rules).__name__}")
        names: dict[str, Any] = {}
        for label, rule in rules.items():
            part = self._part_name(label)
            if not part or "/" in part:
                raise ValueError(f"rules: label {label!r} must be non-empty and must not contain '/' (checkpoints "
                                 "name parts by it)")
            if rule is not None and part in names:
                raise ValueError(f"rules: labels {names[part]!r} and {label!r} would both be part {part!r}; use "
                                 "distinct labels")
            if rule is not None:
                names[part] = label
            if rule is not None and not isinstance(rule, (Rule, Partition)):
                raise TypeError(f"rules[{label!r}] must be a portopt rule or None, got {type(rule).__name__}")
        if not callable(labels):
            flatten(labels)  # a malformed tree fails here, naming itself
        self.rules, self.labels, self.name = dict(rules), labels, name

    # --- which leaves each rule owns -------------------------------------------------------
    def _leaves_like_params(self, argument: str, params: Any, treedef: TreeDef) -> list:
        """The leaves of ``self.labels`` (or of what it returns for ``params``), checked to have
        the params' tree; errors name ``argument``."""
        tree = self.labels(params) if callable(self.labels) else self.labels
        leaves, found = flatten(_in_order_of(tree, params))
        if found != treedef:
            raise ValueError(f"{argument} must have the tree of params (the same dict keys, list lengths and "
                             f"nesting): {argument} is {found.describe()}, params {treedef.describe()}")
        return leaves

    def _label_leaves(self, params: Any, treedef: TreeDef) -> list:
        leaves = self._leaves_like_params("labels", params, treedef)
        for path, label in zip(leaf_paths(treedef), leaves):
            if not _hashable(label) or label not in self.rules:
                raise ValueError(f"labels{path} is {label!r}, not one of the rules' labels {list(self.rules)}")
        return leaves

    def _groups(self, params: Any, treedef: TreeDef) -> dict[Any, list[int]]:
        """The leaf positions of each label that has a rule and leaves, in ``rules`` order."""
        labels = self._label_leaves(params, treedef)
        groups: dict[Any, list[int]] = {}
        rank = _sorted_key_rank(treedef)
        for label in self.rules:
            if self.rules[label] is not None:
                positions = sorted((i for i, x in enumerate(labels) if x == label), key=rank.__getitem__)
                if positions:
                    groups[label] = positions
        return groups

    @staticmethod
    def _part_name(label: Any) -> str:
        """The part's name in the state and in checkpoints."""
        return label if isinstance(label, str) else repr(label)

    # --- the API every rule has -----------------------------------------------------------------
    def init(self, params: Any) -> PartitionState:
        """A fresh state: each rule's ``init`` on its part."""
        checked = check_params(params)
        parts = {}
        for label, positions in self._groups(params, checked.treedef).items():
            rule = self.rules[label]
            assert rule is not None
            parts[self._part_name(label)] = rule.init([checked.leaves[i] for i in positions])
        return PartitionState(rule=self.name, step=0, parts=parts)

    def _inputs(self, params: Any, grads: Any, state: Any) -> tuple[list, list, dict[Any, list[int]], Any]:
        checked = check_params(params)
        g_leaves, g_tree = flatten(grads)
        if g_tree != checked.treedef:
            raise ValueError(f"grads must have the tree of params: grads is {g_tree.describe()}, params "
                             f"{checked.treedef.describe()}")
        if not isinstance(state, PartitionState) or state.rule != self.name:
            raise TypeError(f"state must be the PartitionState of this {self.name} (from its init), got "
                            f"{type(state).__name__}")
        groups = self._groups(params, checked.treedef)
        wanted = {self._part_name(label) for label in groups}
        if set(state.parts) != wanted:
            raise ValueError(f"state has parts {sorted(state.parts)}, these params and labels make {sorted(wanted)}")
        return checked.leaves, g_leaves, groups, checked

    def evaluate_schedules(self, state: Any) -> dict[Any, Any]:
        """Every part's host scalars for this step, by label (a nested partition's: its own
        dict): the schedules (user code) run before any check they could undo, in step and
        update alike. A part whose state a step could not take gets None (its check says why)."""
        parts = getattr(state, "parts", None)
        if not isinstance(parts, dict):
            return {}
        return {label: rule.evaluate_schedules(parts.get(self._part_name(label)))
                for label, rule in self.rules.items() if rule is not None}

    def update(self, params: Any, grads: Any, state: PartitionState) -> tuple[Any, PartitionState]:
        """One step, pure; untouched leaves come back as copies."""
        return self.update_evaluated(params, grads, state)

    def update_evaluated(self, params: Any, grads: Any, state: PartitionState, evaluated: Any = None
                         ) -> tuple[Any, PartitionState]:
        """:meth:`update` with the parts' scalars evaluated first (:meth:`evaluate_schedules`)."""
        by_part = self.evaluate_schedules(state) if evaluated is None else evaluated
        p_leaves, g_leaves, groups, checked = self._inputs(params, grads, state)
        new = [None] * len(p_leaves)
        parts = {}
        for label, positions in groups.items():
            rule = self.rules[label]
            assert rule is not None
            name = self._part_name(label)
            with _naming_the_part(label, [checked.paths[i] for i in positions]):
                part, parts[name] = rule.update_evaluated([p_leaves[i] for i in positions],
                                                          [g_leaves[i] for i in positions], state.parts[name],
                                                          by_part.get(label))
            for i, x in zip(positions, part):
                new[i] = x
        xp = checked.xp
        leaves = [x if x is not None else _copy(xp, p) for x, p in zip(new, p_leaves)]
        return unflatten(checked.treedef, leaves), PartitionState(rule=self.name, step=state.step + 1, parts=parts)

    def plan_step(self, params: Any, grads: Any, state: PartitionState, *, evaluated: Any = None) -> _Planned:
        """Every part checked and its scalars evaluated; ``.apply()`` then writes them all
        (``evaluated``: the parts' scalars, as :meth:`evaluate_schedules` gives them, if evaluated first).

        As one rule's step: no two written params may share memory, even in different parts,
        and a gradient sharing memory with any param is copied first (the step then reads what
        ``update`` reads)."""
        # every part's schedules (user code) run before any check they could undo
        by_part = self.evaluate_schedules(state) if evaluated is None else evaluated
        p_leaves, g_leaves, groups, checked = self._inputs(params, grads, state)
        adapter = adapter_for(checked.xp)
        stepped = sorted(i for positions in groups.values() for i in positions)
        written = Leaves([p_leaves[i] for i in stepped], checked.treedef, checked.xp, checked.device)
        written.paths = [checked.paths[i] for i in stepped]
        _check_no_shared_memory(adapter, written, {})
        spans = _Spans(adapter, [p_leaves[i] for i in stepped])
        g_leaves = [checked.xp.asarray(g, copy=True) if spans.shares(g) or any(g is p for p in p_leaves) else g
                    for g in g_leaves]
        planned = []
        for label, positions in groups.items():
            rule = self.rules[label]
            assert rule is not None
            with _naming_the_part(label, [checked.paths[i] for i in positions]):
                planned.append(rule.plan_step([p_leaves[i] for i in positions], [g_leaves[i] for i in positions],
                                              state.parts[self._part_name(label)], evaluated=by_part.get(label)))
        # each part checked its own slots; no slot may share memory with another part's arrays either
        _check_no_shared_memory(adapter, written, {}, more=_part_slots(state, [self._part_name(label)
                                                                                for label in groups]))
        return _Planned(state, planned)

    def step(self, params: Any, grads: Any, state: PartitionState) -> None:
        """One step in place; every part is checked before any is written."""
        self.plan_step(params, grads, state).apply()

    # --- checkpoints -------------------------------------------------------------------------
    def state_dict(self, state: PartitionState) -> dict[str, Any]:
        """Plain data: each part's own state dict under ``parts`` (see Rule.state_dict)."""
        if not isinstance(state, PartitionState) or state.rule != self.name:
            raise ValueError(f"state must be a PartitionState of this {self.name}")
        parts = {}
        for label, rule in self.rules.items():
            name = self._part_name(label)
            if rule is not None and name in state.parts:
                parts[name] = rule.state_dict(state.parts[name])
        return {"format": PARTITION_FORMAT, "rule": self.name, "step": state.step, "parts": parts}

    def load_state_dict(self, state_dict: dict[str, Any], like: Any) -> PartitionState:
        """A PartitionState from :meth:`state_dict` data, each part on ``like``'s backend."""
        from .checkpoint import CheckpointError

        if not isinstance(state_dict, dict) or state_dict.get("format") != PARTITION_FORMAT:
            raise CheckpointError(f"state_dict is not a {PARTITION_FORMAT} state dict")
        if state_dict.get("rule") != self.name:
            raise CheckpointError(f"state_dict is a {state_dict.get('rule')!r} state, not {self.name}")
        step = state_dict.get("step")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise CheckpointError(f"state_dict's step must be an int >= 0, got {step!r}")
        checked = check_params(like)
        try:
            groups = self._groups(like, checked.treedef)
        except ValueError as error:
            raise CheckpointError(f"like does not fit this {self.name}: {error}") from error
        saved = state_dict.get("parts")
        wanted = {self._part_name(label) for label in groups}
        if not isinstance(saved, dict) or set(saved) != wanted:
            raise CheckpointError(f"state_dict has parts {sorted(saved) if isinstance(saved, dict) else saved!r}, "
                                  f"like and the labels make {sorted(wanted)}")
        parts = {}
        for label, positions in groups.items():
            rule = self.rules[label]
            assert rule is not None
            name = self._part_name(label)
            parts[name] = rule.load_state_dict(saved[name], [checked.leaves[i] for i in positions])
        return PartitionState(rule=self.name, step=step, parts=parts)

    def __repr__(self) -> str:
        return f"partition({self.rules!r}, labels={self.labels!r})"


class Masked(Partition):
    """``rule`` on the leaves where ``mask`` is True; the others untouched, with no state."""

    def __init__(self, rule: Rule | Partition, mask: Any) -> None:
        if not isinstance(rule, (Rule, Partition)):
            raise TypeError(f"rule must be a portopt rule, got {type(rule).__name__}")
        super().__init__({True: rule, False: None}, mask, name=f"masked({rule.name})")
        self.rule = rule

    def _label_leaves(self, params: Any, treedef: TreeDef) -> list:
        leaves = self._leaves_like_params("mask", params, treedef)
        for path, value in zip(leaf_paths(treedef), leaves):
            if not isinstance(value, (bool, np.bool_)):
                raise ValueError(f"mask{path} must be True or False, got {value!r}")
        return [bool(value) for value in leaves]

    @staticmethod
    def _part_name(label: Any) -> str:
        return "masked"

    def __repr__(self) -> str:
        return f"masked({self.rule!r}, mask={self.labels!r})"


def partition(rules: Mapping[Any, Rule | Partition | None], labels: Any | Callable[[Any], Any]) -> Partition:
    """Each rule on its labelled leaves: ``labels`` is a tree like the params (or a function of
    the params giving one) whose leaves are keys of ``rules``; ``None`` rules leave theirs as
    they are. Bit-identical to separate optimizers on the parts."""
    return Partition(rules, labels)


def masked(rule: Rule | Partition, mask: Any | Callable[[Any], Any]) -> Masked:
    """``rule`` on the leaves where ``mask`` (a tree like the params of True/False, or a
    function of the params giving one) is True; the other leaves are untouched and have no state."""
    return Masked(rule, mask)


@contextlib.contextmanager
def _naming_the_part(label: Any, paths: list[str]) -> Iterator[None]:
    """A part's error says which part and which of the user's leaves it is about (the part's
    own messages count its leaves from 0: ``params[0]`` is the part's first leaf)."""
    try:
        yield
    except (TypeError, ValueError) as error:
        if type(error) not in (TypeError, ValueError):
            raise
        raise type(error)(f"part {label!r} (its leaves [0], [1], ... are params{', params'.join(paths)}): "
                          f"{error}") from error


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _copy(xp: Any, x: Any) -> Any:
    return xp.asarray(x, copy=True)

