"""Shared fixtures: every backend found here, and the rule variants of the case matrix."""

from __future__ import annotations

import pytest

import portopt
from portopt.conformance.targets import TARGET_NAMES, find_targets

pytest_plugins = ["portopt.conformance.plugin"]

TARGETS, MISSING = find_targets()


def pytest_report_header(config):
    found = ", ".join(TARGETS) or "none"
    missing = "; ".join(f"{name} ({reason})" for name, reason in MISSING.items()) or "none"
    return [f"portopt {portopt.__version__} from {portopt.__file__}",
            f"backends found: {found}", f"backends missing: {missing}"]


def target_params(names=TARGET_NAMES):
    """pytest params over backends: missing ones are skipped with the reason."""
    return [
        pytest.param(name, marks=pytest.mark.skip(reason=f"{name} not available: {MISSING[name]}"))
        if name in MISSING else name
        for name in names
    ]


def bitwise_targets(dtype: str) -> dict:
    """Targets with ``dtype`` that promise its bits: none with a known exception for it (JAX's flushes)."""
    from portopt.conformance.exceptions import known_primitive_exception

    return {name: t for name, t in TARGETS.items()
            if dtype in t.dtypes and known_primitive_exception(name, dtype) is None}


@pytest.fixture(params=target_params())
def target(request):
    return TARGETS[request.param]


@pytest.fixture
def numpy_target():
    return TARGETS["numpy"]


# Hypothesis: a small profile for CI, a long one by hand (HYPOTHESIS_PROFILE=long pytest tests/test_fuzz.py).
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("ci", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(__import__("os").environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def launches(monkeypatch):
    """How many runs of the generated CUDA table kernel (portopt.kernels.device) a test made,
    on a GPU or through the host shim."""
    from portopt.kernels import device

    count = [0]
    run = device.DeviceLoops.run

    def counted(self, *args, **kwargs):
        count[0] += 1
        return run(self, *args, **kwargs)

    monkeypatch.setattr(device.DeviceLoops, "run", counted)
    return count
