"""pytest plugin: run portopt's conformance suite inside another project's test run.

    pytest -p portopt.conformance.plugin --pyargs portopt.conformance.suite \
        [--portopt-backends numpy torch-cpu] [--portopt-namespace mylib.array_api]

or ``pytest_plugins = ["portopt.conformance.plugin"]`` in a conftest.py and
``from portopt.conformance.suite import *`` in a test module.
"""

from __future__ import annotations

import pytest

from portopt.conformance.targets import TARGET_NAMES, find_targets, namespace_target


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("portopt conformance")
    group.addoption("--portopt-backends", nargs="+", choices=TARGET_NAMES, default=None,
                    help="backends to check (default: every one found)")
    group.addoption("--portopt-namespace", action="append", default=[],
                    help="an array-API namespace module to check, e.g. array_api_strict (repeatable)")
    group.addoption("--portopt-fast-path", default=None, choices=("auto", "compiled", "blocked", "off"),
                    help="CPU fast path used by in-place steps during the suite")


def pytest_configure(config: pytest.Config) -> None:
    mode = config.getoption("--portopt-fast-path", default=None)
    if mode is not None:
        import portopt

        portopt.set_fast_path(mode)


@pytest.fixture(scope="session")
def conformance_targets(request: pytest.FixtureRequest) -> dict:
    """Targets to check: chosen backends (or all found) plus any --portopt-namespace."""
    names = request.config.getoption("--portopt-backends")
    modules = request.config.getoption("--portopt-namespace")
    targets = {} if modules and not names else find_targets(tuple(names) if names else None)[0]
    for module in modules:
        target = namespace_target(module)
        targets[target.label] = target
    if not targets:
        pytest.skip("no backend found to run the conformance suite on")
    return targets
