"""Helpers shared by the tests (importable because pyproject puts tests/ on pytest's path)."""

from __future__ import annotations

import numpy as np

import portopt
from portopt.conformance.cases import load_matrix, variant_rule

VARIANTS = load_matrix().config["variants"]


def variant_id(variant: dict) -> str:
    return f"{variant['rule']}-{variant['name']}"


def make_rule(variant: dict) -> portopt.Rule:
    return variant_rule(variant)


def advance(rule: portopt.Rule, target, params, grads, state):
    """One step: in place where the backend's arrays are mutable, else through ``update``."""
    if target.mutable:
        rule.step(params, grads, state)
        return params, state
    return rule.update(params, grads, state)


def random_arrays(seed: int, shape, dtype: str, count: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(count)]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality (NaN payloads included), dtype and shape too."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def same_bits_any_nan(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality except NaN sign and payload, which the contract leaves open (README)."""
    from portopt.conformance.digests import canonical

    return same_bits(canonical(np.asarray(a)), canonical(np.asarray(b)))
