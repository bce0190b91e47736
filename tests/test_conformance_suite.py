"""The full conformance suite (primitives and golden vectors) on every backend found here.

The same tests a third party runs with ``pytest -p portopt.conformance.plugin --pyargs
portopt.conformance.suite``; the plugin is loaded by tests/conftest.py.
"""

from portopt.conformance.suite import (  # noqa: F401 - collected by pytest
    test_golden_vectors,
    test_primitives_correctly_rounded_in_portopt_namespace,
)

import pytest  # noqa: E402

from conftest import TARGETS  # noqa: E402
from portopt.conformance.cli import main as conformance_main  # noqa: E402


@pytest.mark.parametrize("mode", ["off", "blocked"])
def test_golden_vectors_with_each_fast_path_setting(mode, capsys):
    """The suite above runs with the default fast path (auto: compiled where numba applies, blocked
    for half precision). Here every golden case runs again with the reference path and with the
    blocked path, on the backends that have fast paths."""
    backends = [name for name in ("numpy", "torch-cpu") if name in TARGETS]
    code = conformance_main(["--backends", *backends, "--skip-primitives", "--no-progress", "--fast-path", mode])
    out = capsys.readouterr().out
    assert code == 0, out[-3000:]
    assert f"fast path: {mode}" in out and " 0 failed" in out
