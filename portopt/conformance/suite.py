"""The conformance suite as pytest tests (used with :mod:`portopt.conformance.plugin`)."""

from __future__ import annotations

import numpy as np
import pytest

from . import golden
from .cases import load_matrix
from .primitives import run_primitives
from .runner import run_case

_CASES = load_matrix().cases
_GOLDEN: dict = {}


def _golden_case(case):
    if case.rule not in _GOLDEN:
        _GOLDEN[case.rule] = golden.load_golden(case.rule)
    return _GOLDEN[case.rule].get(case.id)


def test_primitives_correctly_rounded_in_portopt_namespace(conformance_targets):
    """Every primitive the rules use is correctly rounded in the namespace portopt hands them."""
    failures = [r for r in run_primitives(conformance_targets) if r.failed_on_portopt]
    assert not failures, "\n".join(
        f"{r.target} {r.operation} {r.dtype}: {r.wrong}/{r.total} wrong, e.g. {r.example}" for r in failures
    )


@pytest.mark.parametrize("case", _CASES, ids=[case.id for case in _CASES])
def test_golden_vectors(case, conformance_targets):
    """Each backend reproduces the golden digests of ``case`` bit for bit."""
    expected = _golden_case(case)
    assert expected is not None, f"no golden vectors for {case.id}"
    with np.errstate(all="ignore"):
        results, _ = run_case(case, conformance_targets, expected)
    failed = [r for r in results.values() if r.status in ("mismatch", "error")]
    assert not failed, "\n".join(f"{r.target}: {r.detail}" for r in failed)
    known = [r for r in results.values() if r.status == "known exception"]
    if known:
        pytest.xfail("; ".join(f"{r.target}: {r.detail}" for r in known))
