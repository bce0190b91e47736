"""The GPU's executor without a GPU: in the fast-path mode "shim", NumPy steps run the
generated CUDA table kernel compiled for the host (portopt.kernels.device), through the same
plan, address tables, chunks and scalar order a CuPy step launches. Golden cases, in place
and pure, must give the golden bits; only the launch itself is left for a GPU."""

from __future__ import annotations

import numpy as np
import pytest

import portopt
from conftest import TARGETS
from helpers import VARIANTS, make_rule, variant_id
from portopt.conformance.cases import load_matrix
from portopt.conformance.golden import load_golden
from portopt.conformance.runner import run_case
from portopt.kernels import host_shim

pytestmark = pytest.mark.skipif(host_shim.compiler() is None, reason="no C++ compiler (g++ or clang++) found")


def _golden_cases(shapes, dtypes=("float16", "bfloat16", "float32", "float64")):
    return load_matrix().select(dtypes=dtypes, shapes=shapes)


@pytest.mark.parametrize("api", ["step", "update"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_the_shim_executor_gives_the_golden_bits(dtype, api, launches):
    """Every rule variant's golden cases on a tree of leaves (one table, one call per step) and
    on an odd-sized vector, 1,000 steps each, stepped by the generated source."""
    numpy_only = {"numpy": TARGETS["numpy"]}
    if dtype not in numpy_only["numpy"].dtypes:
        pytest.skip(f"NumPy has no {dtype} here (ml_dtypes gives it bfloat16)")
    failures = []
    with portopt.fast_path("shim"):
        for case in _golden_cases(("tree", "prime"), (dtype,)):
            golden = load_golden(case.rule)
            golden = golden.get("cases", golden)
            before = launches[0]
            results, _ = run_case(case, numpy_only, golden[case.id], api=api)
            if results["numpy"].status != "pass":
                failures.append(f"{case.id}: {results['numpy'].detail}")
            if launches[0] - before < case.steps:
                failures.append(f"{case.id}: only {launches[0] - before} of {case.steps} steps ran the generated source")
    assert not failures, "\n".join(failures)


@pytest.mark.long
def test_every_golden_case_under_the_shim_executor(launches):
    """The whole matrix (every dtype and shape): what the shim cannot take (strided and
    transposed views have no address) takes the reference."""
    numpy_only = {"numpy": TARGETS["numpy"]}
    failures, not_run = [], set()
    with portopt.fast_path("shim"):
        for case in _golden_cases((), numpy_only["numpy"].dtypes):
            golden = load_golden(case.rule)
            golden = golden.get("cases", golden)
            before = launches[0]
            results, _ = run_case(case, numpy_only, golden[case.id])
            if launches[0] == before:
                not_run.add(case.shape)
            if results["numpy"].status != "pass":
                failures.append(f"{case.id}: {results['numpy'].detail}")
    assert not failures, "\n".join(failures)
    assert not_run <= {"strided", "transposed"}, f"shapes that never ran the generated source: {sorted(not_run)}"


def test_the_shim_takes_only_what_the_kernel_reads():
    """Strided params and a slot stored in another dtype fall back to the reference."""
    rule = portopt.Adam(lr=0.1)
    with portopt.fast_path("shim"):
        strided = np.ones(8)[::2]
        rule.step(strided, np.ones(4), rule.init(strided))
        assert [g.executor for g in rule._plans[True].groups] == ["reference"]
        wide = portopt.Adam(lr=0.1, state_dtype="float64")
        p = np.ones(4, np.float32)
        wide.step(p, np.ones(4, np.float32), wide.init(p))
        assert [g.executor for g in wide._plans[True].groups] == ["reference"]
        p = np.ones(4)
        rule.step(p, np.ones(4), rule.init(p))
        assert [g.executor for g in rule._plans[True].groups] == ["cuda"]


@pytest.mark.parametrize("variant", [pytest.param(v, id=variant_id(v)) for v in VARIANTS])
def test_flags_that_change_between_steps_get_their_own_kernel(variant):
    """SGD's first step (and any flag) selects another generated kernel: 3 steps in the shim
    equal 3 steps of the reference, bit for bit, with a leaf larger than one chunk."""
    from helpers import same_bits_any_nan

    rule = make_rule(variant)
    rng = np.random.default_rng(7)
    start = [rng.standard_normal(40_000).astype(np.float32), rng.standard_normal(5).astype(np.float32)]
    grads = [[rng.standard_normal(x.shape).astype(np.float32) for x in start] for _ in range(3)]
    outcomes = []
    for mode in ("off", "shim"):
        with portopt.fast_path(mode):
            params = [x.copy() for x in start]
            state = rule.init(params)
            for g in grads:
                rule.step(params, g, state)
            outcomes.append(params)
    assert all(same_bits_any_nan(a, b) for a, b in zip(*outcomes))


@pytest.mark.parametrize("api", ["step", "update"])
def test_split_master_weights_run_the_generated_source_on_every_shape_with_an_address(api, launches):
    """Adam/split's float32 master goes through the shim like float32 params, 0-d ones too (NumPy
    makes 0-d results scalars, which have no address: the join and the split keep arrays)."""
    if "bfloat16" not in TARGETS["numpy"].dtypes:
        pytest.skip("NumPy has no bfloat16 here (ml_dtypes gives it)")
    numpy_only = {"numpy": TARGETS["numpy"]}
    with portopt.fast_path("shim"):
        for case in load_matrix().select(variants=("split",), shapes=("scalar", "one", "tree")):
            golden = load_golden(case.rule)
            before = launches[0]
            results, _ = run_case(case, numpy_only, golden.get("cases", golden)[case.id], api=api)
            assert results["numpy"].status == "pass", results["numpy"].detail
            assert launches[0] - before >= case.steps, case.id
