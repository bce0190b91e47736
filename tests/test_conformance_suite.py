"""The full conformance suite (primitives and golden vectors) on every backend found here.

The same tests a third party runs with ``pytest -p portopt.conformance.plugin --pyargs
portopt.conformance.suite``; the plugin is loaded by tests/conftest.py.
"""

import pytest  # noqa: E402
from portopt.conformance.cli import main as conformance_main  # noqa: E402
from portopt.conformance.suite import (  # noqa: F401 - collected by pytest
    test_golden_vectors,
    test_primitives_correctly_rounded_in_portopt_namespace,
)


@pytest.mark.parametrize("mode", ["off", "blocked"])
def test_golden_vectors_with_each_fast_path_setting(mode, capsys):
    """The suite above runs with the default fast path (auto: compiled where numba applies, blocked
    for half precision). Here every golden case runs again on NumPy with the reference path and
    with the blocked path (torch CPU tensors run the very same fast code through their NumPy view;
    tests/test_fast_paths.py checks torch under each path against its reference)."""
    code = conformance_main(["--backends", "numpy", "--skip-primitives", "--no-progress", "--fast-path", mode])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert f"fast path: {mode}" in out and " 0 failed" in out
