"""Helpers shared by the tests (importable because pyproject puts tests/ on pytest's path)."""

from __future__ import annotations

import numpy as np

import portopt
from portopt.conformance.cases import load_matrix, variant_rule

ALL_VARIANTS = load_matrix().config["variants"]
# the variants of every dtype (the tests that cross variants with float32 and float64 take these);
# one with its own dtypes (Adam/split: bfloat16 only) has its own tests (test_split_master.py)
VARIANTS = [variant for variant in ALL_VARIANTS if "dtypes" not in variant]


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


def step_then_update(rule: portopt.Rule, p0: np.ndarray, grads: list) -> bytes:
    """The bytes of the params and every slot after ``grads``, stepping in place and updating
    purely in turn (from a copy of ``p0``): what every executor must agree on."""
    p, state = p0.copy(), rule.init(p0)
    for index, g in enumerate(grads):
        if index % 2:
            p, state = rule.update(p, g, state)
        else:
            rule.step(p, g, state)
    return np.asarray(p).tobytes() + b"".join(np.asarray(x).tobytes() for x in state.slots.values())


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality (NaN payloads included), dtype and shape too."""
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def same_bits_any_nan(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality except NaN sign and payload, which the contract leaves open (README)."""
    from portopt.conformance.digests import canonical

    return same_bits(canonical(np.asarray(a)), canonical(np.asarray(b)))


def break_torch_cpu_sqrt(monkeypatch) -> None:
    """Give torch CPU tensors a square root one ulp above the correctly rounded one, on every
    element and every array size: a defect the conformance tools must catch on any machine.
    (torch's own CPU sqrt is off by an ulp only where MKL's VML takes it: on an AMD EPYC already
    at 257 elements, on an Intel Xeon only on long arrays, so it is no dependable defect.)"""
    import torch
    from portopt.backends.torch_adapter import TorchAdapter, numpy_sqrt_for_cpu_tensor

    def one_ulp_high(x):
        root = numpy_sqrt_for_cpu_tensor(x)
        return torch.nextafter(root, torch.full_like(root, float("inf")))

    monkeypatch.setattr(TorchAdapter, "primitive_overrides", lambda self, device: {"sqrt": one_ulp_high})
