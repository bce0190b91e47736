"""The conformance suite (primitives and golden vectors) on every backend found here, in two tiers.

Default tier (``pytest``): every golden case on NumPy; torch on the shapes where backends
differ (0-d, strided, transposed, tree); array-api-strict, whose every operation costs
about 15 µs of checks, on every case's 0-d
shape and, in float32, a strided view (its trees cost 2-6 s a case: the long tier); eager JAX,
which compiles each case's kernel (about 0.3-0.6 s a case), on the float32 trees; the
primitive tier everywhere.
Long tier (``pytest -m long``; CI runs it too): torch and array-api-strict on the other cases
(JAX's: tests/test_jax.py, eager and jitted in lockstep), and every case again with
the fast path off (the reference) and blocked, on NumPy and torch (blocked: torch on the shapes
above, where its memory differs from NumPy's).
``portopt conformance`` (the main job) always runs every case on every backend.

The plugin's own tests (what a third party runs with ``pytest -p portopt.conformance.plugin
--pyargs portopt.conformance.suite``) are checked in tests/test_conformance_cli.py.
"""

from __future__ import annotations

import numpy as np
import pytest

import portopt
from conftest import TARGETS
from portopt.conformance.cases import load_matrix
from portopt.conformance.golden import load_golden
from portopt.conformance.runner import run_case
from portopt.conformance.suite import test_primitives_correctly_rounded_in_portopt_namespace  # noqa: F401

CASES = load_matrix().cases
STRICT_SHAPES_BY_DEFAULT = ("scalar",)
STRICT_FLOAT32_SHAPES_BY_DEFAULT = ("strided",)
# torch runs NumPy's compiled loops on its own memory: in the default tier, the shapes where a
# backend's views, strides and trees differ (the long tier: the rest)
TORCH_SHAPES_BY_DEFAULT = ("scalar", "strided", "transposed", "tree")
# eager JAX compiles each case's kernel: in the default tier, the float32 trees (several leaves,
# whole-tree sums); tests/test_jax.py checks every rule on random inputs there
JAX_FLOAT32_SHAPES_BY_DEFAULT = ("tree",)
_GOLDEN: dict = {}


def _expected(case):
    if case.rule not in _GOLDEN:
        _GOLDEN[case.rule] = load_golden(case.rule)
    expected = _GOLDEN[case.rule].get(case.id)
    assert expected is not None, f"no golden vectors for {case.id}"
    return expected


def _check(case, targets) -> None:
    with np.errstate(all="ignore"):
        results, _ = run_case(case, targets, _expected(case))
    failed = [r for r in results.values() if r.status in ("mismatch", "error")]
    assert not failed, "\n".join(f"{r.target}: {r.detail}" for r in failed)
    known = [r for r in results.values() if r.status == "known exception"]
    if known:
        pytest.xfail("; ".join(f"{r.target}: {r.detail}" for r in known))


def _by_default(label: str, case) -> bool:
    """Whether the default tier runs ``case`` on backend ``label`` (every case runs on NumPy)."""
    if label == "array_api_strict":
        return case.shape in STRICT_SHAPES_BY_DEFAULT or (
            case.dtype == "float32" and case.shape in STRICT_FLOAT32_SHAPES_BY_DEFAULT)
    if label == "torch-cpu":
        return case.shape in TORCH_SHAPES_BY_DEFAULT
    if label == "jax":
        return case.dtype == "float32" and case.shape in JAX_FLOAT32_SHAPES_BY_DEFAULT
    return True


def _default_targets(case) -> dict:
    return {label: target for label, target in TARGETS.items() if _by_default(label, case)}


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_golden_vectors(case):
    """Each backend reproduces the golden digests of ``case`` bit for bit (fast path: the process's)."""
    _check(case, _default_targets(case))


_LONG = [pytest.param(case, label, id=f"{label}-{case.id}") for case in CASES
         for label in ("array_api_strict", "torch-cpu")
         if not _by_default(label, case) and (label not in TARGETS or case.dtype in TARGETS[label].dtypes)]


@pytest.mark.long
@pytest.mark.parametrize("case, label", _LONG)
def test_golden_vectors_the_default_tier_leaves_out(case, label):
    """array-api-strict's and torch's other cases, on the process's fast path."""
    if label not in TARGETS:
        pytest.skip(f"{label} is not installed")
    _check(case, {label: TARGETS[label]})


@pytest.mark.long
@pytest.mark.parametrize("mode", ["off", "blocked"])
@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_golden_vectors_with_each_fast_path_setting(case, mode):
    """Every case again with the reference path (torch's own operations, on every case) and
    with the blocked path (portopt's loops over blocks: on torch they run on the tensor's memory,
    so torch adds to NumPy only where its arrays differ: 0-d, strided, transposed, tree), on NumPy
    and torch; tests/test_fast_paths.py checks every path against the reference on random inputs
    in the default tier."""
    torch_too = mode == "off" or case.shape in TORCH_SHAPES_BY_DEFAULT
    targets = {label: TARGETS[label] for label in ("numpy", "torch-cpu") if label in TARGETS
               and (label == "numpy" or torch_too)}
    with portopt.fast_path(mode):
        _check(case, targets)
