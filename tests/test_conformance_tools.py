"""The conformance suite's own parts: the exact reference, the generator, the digests, and
that the runner finds, locates and reports a broken backend."""

from __future__ import annotations

import json
import math
import shutil
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import portopt
from conftest import MISSING, TARGETS
from helpers import break_torch_cpu_sqrt
from portopt.conformance import exact, generator
from portopt.conformance.cases import load_matrix
from portopt.conformance.cli import main as conformance_main
from portopt.conformance.digests import digest, ulp_distance
from portopt.conformance.golden import load_golden
from portopt.conformance.runner import run_case

finite64 = st.floats(allow_nan=False, allow_infinity=False)
F64 = exact.FORMATS["float64"]


@given(finite64, finite64)
def test_exact_arithmetic_agrees_with_ieee_doubles(x, y):
    # Python's float arithmetic is IEEE binary64, correctly rounded: an independent check.
    def same(a, b):
        return (math.isnan(a) and math.isnan(b)) or struct.pack("<d", a) == struct.pack("<d", b)

    assert same(exact.add(x, y, F64), x + y)
    assert same(exact.subtract(x, y, F64), x - y)
    assert same(exact.multiply(x, y, F64), x * y)
    if y != 0:
        assert same(exact.divide(x, y, F64), x / y)
    assert same(exact.sqrt(abs(x), F64), math.sqrt(abs(x)))


@settings(max_examples=300)
@given(st.floats(width=32, allow_nan=False), st.floats(width=32, allow_nan=False))
def test_exact_float32_agrees_with_numpy(x, y):
    f32 = exact.FORMATS["float32"]
    a, b = np.float32(x), np.float32(y)
    with np.errstate(all="ignore"):
        for ours, numpys in ((exact.add(x, y, f32), a + b), (exact.multiply(x, y, f32), a * b),
                             (exact.sqrt(abs(x), f32), np.sqrt(np.abs(a)))):
            assert np.float32(ours).tobytes() == np.float32(numpys).tobytes() or (math.isnan(ours) and np.isnan(numpys))


def test_exact_rounding_edges():
    f16 = exact.FORMATS["float16"]
    assert exact.convert(65520.0, f16) == math.inf  # halfway to the next binade: ties to even overflows
    assert exact.convert(65519.99, f16) == 65504.0
    assert exact.convert(2.0 ** -25, f16) == 0.0  # half the smallest subnormal: ties to even gives 0
    assert math.copysign(1, exact.convert(-(2.0 ** -26), f16)) < 0
    assert exact.maximum(-0.0, 0.0, f16) == 0.0 and math.copysign(1, exact.maximum(-0.0, 0.0, f16)) > 0
    assert math.copysign(1, exact.add(-0.0, -0.0, f16)) < 0 and math.copysign(1, exact.add(-0.0, 0.0, f16)) > 0


def test_splitmix64_matches_the_published_sequence():
    # SplitMix64 seeded with 0: first outputs from the reference implementation (Vigna).
    assert int(generator.splitmix64(np.uint64(0))) == 0xE220A8397B1DCDAF
    assert int(generator.splitmix64(np.uint64(0x9E3779B97F4A7C15))) == 0x6E789E6AA1B965F4


def test_gradients_hold_the_promised_special_values():
    config = load_matrix().config["gradients"]
    values = np.concatenate([generator.gradient(1, 0, step, (257,), "float32", config) for step in range(1, 40)])
    info = np.finfo(np.float32)
    assert (values == 0).any() and np.signbit(values[values == 0]).any()
    assert ((values != 0) & (np.abs(values) < info.smallest_normal)).any()
    assert (np.abs(values) == info.max).any()
    assert (values > 0).any() and (values < 0).any()
    run = [generator.gradient(1, 0, s, (5,), "float32", config) for s in (200, 250, 399)]
    assert all(np.array_equal(run[0], r) for r in run)
    assert not generator.gradient(1, 0, 500, (5,), "float32", config).any()


def test_digest_ignores_nan_payload_but_not_zero_sign():
    a = np.array([np.nan, 0.0], np.float32)
    b = np.array([0.0, 0.0], np.float32)
    b.view(np.uint32)[0] = 0xFFC00001  # a negative NaN with a payload
    assert digest(a) == digest(b)
    assert digest(np.array([0.0])) != digest(np.array([-0.0]))
    assert int(ulp_distance(np.array([0.0]), np.array([-0.0]))[0]) == 1
    assert int(ulp_distance(np.array([1.0], np.float32), np.array([np.nextafter(np.float32(1), 2)]))[0]) == 1


@pytest.mark.skipif("torch-cpu" not in TARGETS, reason=f"torch-cpu not available: {MISSING.get('torch-cpu')}")
def test_runner_locates_the_mismatch_of_a_broken_backend(monkeypatch):
    """With a square root one ulp high on torch, the runner names the step and element."""
    case = load_matrix().select(rules=["Adam"], variants=["defaults"], dtypes=["float32"], shapes=["prime"])[0]
    golden = load_golden("Adam")[case.id]
    break_torch_cpu_sqrt(monkeypatch)
    with np.errstate(all="ignore"), portopt.fast_path("off"):
        results, _ = run_case(case, {"torch-cpu": TARGETS["torch-cpu"], "numpy": TARGETS["numpy"]}, golden)
    assert results["numpy"].status == "pass"
    broken = results["torch-cpu"]
    assert broken.status == "mismatch"
    m = broken.mismatch
    assert m.step is not None and m.step <= m.checkpoint and m.array is not None
    assert m.expected != m.got and m.ulps >= 1 and m.expected_hex != m.got_hex
    assert f"step {m.step}" in broken.detail and "ulp" in broken.detail


def test_regenerate_refuses_to_overwrite_changed_vectors_without_accept(tmp_path, capsys):
    from portopt.conformance import golden

    shutil.copy(golden.golden_path("AdaGrad"), tmp_path / "AdaGrad.json")
    document = json.loads((tmp_path / "AdaGrad.json").read_text())
    first = next(iter(document["cases"]))
    document["cases"][first]["checkpoints"]["1"]["params"] = "0" * 64
    (tmp_path / "AdaGrad.json").write_text(json.dumps(document))
    before = (tmp_path / "AdaGrad.json").read_text()
    code = conformance_main(["regenerate", "--rules", "AdaGrad", "--golden-dir", str(tmp_path), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1 and "1 cases would change" in out and first in out
    assert (tmp_path / "AdaGrad.json").read_text() == before


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "bfloat16"])
@pytest.mark.parametrize("shape", [(), (1,), (16, 24), (0,)])
def test_all_steps_at_once_are_each_steps_gradient(dtype, shape):
    """The suite generates a leaf's 1000 gradients in one call; each row must be the gradient
    FORMAT.md defines for its step (the run and zero stretches at their edges included)."""
    pytest.importorskip("ml_dtypes") if dtype == "bfloat16" else None
    from portopt.conformance import generator

    schedule = {"run_start": 200, "run_end": 400, "zero_start": 500, "zero_end": 550}
    block = generator.gradients(7, 3, 1000, shape, dtype, schedule)
    for step in (1, 2, 199, 200, 201, 399, 400, 401, 499, 500, 549, 550, 999, 1000):
        one = generator.gradient(7, 3, step, shape, dtype, schedule)
        assert block[step - 1].tobytes() == one.tobytes() and block[step - 1].shape == one.shape, step
