"""The case matrix: read ``cases.toml`` and expand it into concrete cases."""

from __future__ import annotations

import functools
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import portopt
from portopt import schedules
from portopt.trees import TreeDef, flatten, leaf_paths, unflatten

from . import generator

__all__ = ["Case", "Matrix", "load_matrix", "CASES_FILE"]

CASES_FILE = Path(__file__).with_name("cases.toml")


def build_schedule(spec: dict) -> schedules.Schedule:
    """A schedule from its data form, e.g. ``{schedule = "linear_warmup", peak = 0.01, warmup_steps = 100}``."""
    spec = dict(spec)
    kind = spec.pop("schedule")
    if kind == "join":
        return schedules.join(build_schedule(spec["first"]), build_schedule(spec["second"]), spec["boundary"])
    factories: dict[str, Callable[..., schedules.Schedule]] = {
        "constant": schedules.constant,
        "linear_warmup": schedules.linear_warmup,
        "exponential_decay": schedules.exponential_decay,
    }
    if kind not in factories:
        raise ValueError(f"unknown schedule {kind!r} in cases.toml")
    return factories[kind](**spec)


def build_rule(rule: str, options: dict) -> portopt.Rule:
    """The portopt rule of a case, with schedules built and lists turned into tuples."""
    kwargs = {}
    for name, value in options.items():
        if isinstance(value, dict):
            value = build_schedule(value)
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[name] = value
    return portopt.RULES[rule](**kwargs)


@dataclass(frozen=True)
class Leaf:
    """One parameter array of a case: its base shape and the view taken of it."""

    base_shape: tuple[int, ...]
    view: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        if self.view == "transpose":
            return tuple(reversed(self.base_shape))
        if self.view == "every_third":
            return (len(range(0, self.base_shape[0], 3)),)
        return self.base_shape

    def take_view(self, x: Any) -> Any:
        """The view of an array of ``base_shape`` (standard slicing and ``.T`` only)."""
        if self.view == "transpose":
            return x.T
        if self.view == "every_third":
            return x[::3]
        return x


@dataclass(frozen=True)
class Case:
    variant: str
    rule: str
    options: dict
    dtype: str
    shape: str
    seed: int
    steps: int
    checkpoints: tuple[int, ...]
    gradient_schedule: dict
    leaves: tuple[Leaf, ...]
    treedef: TreeDef
    small_values_up_to: int
    clip_norm: float | None = None  # gradients clipped by portopt.clip_by_global_norm first
    accumulate: int | None = None  # the rule is portopt.MultiSteps(rule, accumulate)

    @property
    def id(self) -> str:
        return f"{self.rule}/{self.variant}/{self.dtype}/{self.shape}"

    @property
    def paths(self) -> list[str]:
        return leaf_paths(self.treedef)

    def make_rule(self) -> portopt.Rule:
        return variant_rule({"rule": self.rule, "options": self.options, "clip_norm": self.clip_norm,
                             "accumulate": self.accumulate})

    def host_bases(self) -> list[np.ndarray]:
        """Initial contents of each leaf's base array (before the view is taken)."""
        return [
            generator.initial_params(self.seed, index, leaf.base_shape, self.dtype)
            for index, leaf in enumerate(self.leaves)
        ]

    def host_gradients(self, step: int) -> list[np.ndarray]:
        """The gradients of ``step`` (read-only: every variant of a dtype and shape shares them)."""
        schedule = tuple(sorted(self.gradient_schedule.items()))
        return [_gradients(self.seed, index, self.steps, leaf.shape, self.dtype, schedule)[step - 1]
                for index, leaf in enumerate(self.leaves)]

    def params_on(self, target: Any, bases: Sequence[np.ndarray] | None = None) -> Any:
        """The case's parameter tree on ``target``, views taken there."""
        bases = self.host_bases() if bases is None else bases
        leaves = [leaf.take_view(target.asarray(base)) for leaf, base in zip(self.leaves, bases)]
        return unflatten(self.treedef, leaves)

    def grads_on(self, target: Any, host: Sequence[np.ndarray]) -> Any:
        return unflatten(self.treedef, [target.asarray(g) for g in host])


def variant_rule(variant: dict) -> portopt.Rule:
    """The rule of a cases.toml variant: its rule and options, accumulated (``accumulate``)
    and clipped (``clip_norm``) where the variant says so."""
    rule = build_rule(variant["rule"], variant["options"])
    if variant.get("accumulate") is not None:
        rule = portopt.MultiSteps(rule, variant["accumulate"])
    return portopt.Clipped(rule, variant["clip_norm"]) if variant.get("clip_norm") is not None else rule


# options of portopt's that torch.optim has no counterpart for (a variant setting one has no peer)
_WITHOUT_TORCH_PEER = ("master_weights", "eps_hat", "bias_correction")


def has_torch_equivalent(variant: dict) -> bool:
    """Whether torch.optim has this variant: not an accumulating or a compensated one, nor one of
    the Adam forms torch lacks (``eps_hat``, ``bias_correction=False``)."""
    return variant.get("accumulate") is None and not any(name in variant["options"] for name in _WITHOUT_TORCH_PEER)


@functools.cache
def _gradients(seed: int, leaf: int, steps: int, shape: tuple[int, ...], dtype: str, schedule: tuple) -> np.ndarray:
    """Every step's gradient of one leaf, generated together and kept (read-only): the variants of
    a dtype and shape step on the same ones."""
    array = generator.gradients(seed, leaf, steps, shape, dtype, dict(schedule))
    array.flags.writeable = False
    return array


@dataclass
class Matrix:
    config: dict
    cases: list[Case] = field(default_factory=list)

    def select(self, rules: Sequence[str] = (), dtypes: Sequence[str] = (), shapes: Sequence[str] = (),
               variants: Sequence[str] = ()) -> list[Case]:
        return [
            case for case in self.cases
            if (not rules or case.rule in rules)
            and (not dtypes or case.dtype in dtypes)
            and (not shapes or case.shape in shapes)
            and (not variants or case.variant in variants)
        ]


def _shape_leaves(definition: dict) -> tuple[tuple[Leaf, ...], TreeDef]:
    if "tree" in definition:
        leaves, treedef = flatten(_leaf_tree(definition["tree"]))
        return tuple(leaves), treedef
    leaf = Leaf(tuple(definition["shape"]), definition.get("view"))
    return (leaf,), flatten(0)[1]


def _leaf_tree(tree: Any) -> Any:
    """A tree of shapes from TOML: lists of ints are shapes (leaves), other lists and dicts containers."""
    if isinstance(tree, dict):
        return {key: _leaf_tree(value) for key, value in tree.items()}
    if all(isinstance(x, int) for x in tree):
        return Leaf(tuple(tree))
    return [_leaf_tree(x) for x in tree]


def load_matrix(path: Path | str = CASES_FILE) -> Matrix:
    """Every case of the matrix file, in file order: variants x dtypes x shapes."""
    with open(path, "rb") as handle:
        config = tomllib.load(handle)
    if config.get("format") != 1:
        raise ValueError(f"{path}: unsupported cases format {config.get('format')!r}")
    matrix = Matrix(config)
    checkpoints = tuple(config["checkpoints"])
    for variant in config["variants"]:
        for dtype in variant.get("dtypes", config["dtypes"]):  # a variant may name fewer
            for shape in config["shapes"]:
                leaves, treedef = _shape_leaves(config["shape_defs"][shape])
                matrix.cases.append(Case(
                    variant=variant["name"], rule=variant["rule"], options=variant["options"],
                    dtype=dtype, shape=shape, seed=config["seed"], steps=config["steps"],
                    checkpoints=checkpoints, gradient_schedule=config["gradients"],
                    leaves=leaves, treedef=treedef, small_values_up_to=config["small_values_up_to"],
                    clip_norm=variant.get("clip_norm"), accumulate=variant.get("accumulate"),
                ))
    return matrix
