"""Dask arrays through the functional API: lazy, chunk-wise, and NumPy's bits after compute()."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import portopt
from helpers import VARIANTS, make_rule, random_arrays, same_bits, variant_id

da = pytest.importorskip("dask.array", reason="dask is not installed (pip install 'portopt[dask]')")
dask = pytest.importorskip("dask")

SHAPES = {"w": (23, 17), "b": (5,)}
CHUNKINGS = {"one_chunk": {"w": (23, 17), "b": (5,)}, "uneven": {"w": (10, 6), "b": (2,)},
             "single_elements": {"w": (1, 17), "b": (1,)}}


def _refuse_compute(*args, **kwargs):
    raise AssertionError("a Dask graph was computed inside update()")


def needs_host_decision(rule: portopt.Rule) -> bool:
    """Rules whose step depends on a host value computed from the gradients (documented)."""
    inner = getattr(rule, "rule", rule)
    return inner.skip_nonfinite or isinstance(inner, portopt.AdaGradNorm)


def _numpy_run(rule, params, grads):
    state = rule.init(params)
    for g in grads:
        params, state = rule.update(params, g, state)
    return params, state


def _dask_run(rule, params, grads, chunks, lazy):
    as_dask = {k: da.from_array(v, chunks=chunks[k]) for k, v in params.items()}
    state = rule.init(as_dask)
    scheduler = _refuse_compute if lazy else "sync"
    with dask.config.set(scheduler=scheduler):
        for g in grads:
            as_dask, state = rule.update(as_dask, {k: da.from_array(v, chunks=chunks[k]) for k, v in g.items()}, state)
    return as_dask, state


@pytest.mark.parametrize("chunking", sorted(CHUNKINGS))
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_update_stays_lazy_and_computes_numpy_bits(variant, chunking):
    rule = make_rule(variant)
    params = {k: random_arrays(1, shape, "float32", 1)[0] for k, shape in SHAPES.items()}
    grads = [{k: random_arrays(10 + i, shape, "float32", 1)[0] for k, shape in SHAPES.items()} for i in range(6)]
    want_params, want_state = _numpy_run(rule, params, grads)
    lazy = not needs_host_decision(rule)
    got_params, got_state = _dask_run(rule, params, grads, CHUNKINGS[chunking], lazy=lazy)
    assert isinstance(got_params["w"], da.Array)
    computed_params, computed_slots = dask.compute(got_params, got_state.slots)
    for name in SHAPES:
        assert same_bits(computed_params[name], want_params[name]), name
        for slot in want_state.slots:
            assert same_bits(computed_slots[slot][name], want_state.slots[slot][name]), (slot, name)
    assert got_state.step == want_state.step == len(grads)


def test_rules_with_a_host_decision_are_the_documented_exceptions_to_laziness():
    rule = portopt.Adam(skip_nonfinite=True)
    params = {k: random_arrays(1, shape, "float32", 1)[0] for k, shape in SHAPES.items()}
    with pytest.raises(AssertionError, match="computed inside update"):
        _dask_run(rule, params, [params], CHUNKINGS["uneven"], lazy=True)


@settings(max_examples=25, deadline=None)
@given(shape=st.lists(st.integers(1, 12), min_size=1, max_size=3), data=st.data(),
       dtype=st.sampled_from(["float16", "float32", "float64"]), rule_name=st.sampled_from(["Adam", "Lion", "RMSProp"]))
def test_any_chunking_gives_numpy_bits(shape, data, dtype, rule_name):
    chunks = tuple(data.draw(st.integers(1, n), label=f"chunk{axis}") for axis, n in enumerate(shape))
    rule = portopt.RULES[rule_name](lr=0.01)
    params = {"w": random_arrays(2, tuple(shape), dtype, 1)[0]}
    grads = [{"w": g} for g in random_arrays(3, tuple(shape), dtype, 4)]
    want, _ = _numpy_run(rule, params, grads)
    got, _ = _dask_run(rule, params, grads, {"w": chunks}, lazy=True)
    assert same_bits(got["w"].compute(), want["w"])


def test_in_place_step_on_dask_is_lazy_too():
    rule = portopt.AdamW(lr=0.01, amsgrad=True)
    host = random_arrays(4, (30, 8), "float64", 1)[0]
    grads = random_arrays(5, (30, 8), "float64", 3)
    want, state = host.copy(), rule.init(host)
    for g in grads:
        rule.step(want, g, state)
    lazy = da.from_array(host, chunks=(7, 3))
    lazy_state = rule.init(lazy)
    with dask.config.set(scheduler=_refuse_compute):
        for g in grads:
            rule.step(lazy, da.from_array(g, chunks=(11, 8)), lazy_state)
    assert same_bits(lazy.compute(), want)


def test_distributed_scheduler_with_two_worker_processes_gives_numpy_bits():
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
    rule = portopt.Adam(lr=1e-3, weight_decay=0.01)
    host = random_arrays(6, (4000, 64), "float32", 1)[0]
    grads = random_arrays(7, (4000, 64), "float32", 12)
    want, _ = _numpy_run(rule, host, grads)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  host="127.0.0.1") as cluster, distributed.Client(cluster) as client:
        params = da.from_array(host, chunks=(500, 64))
        state = rule.init(params)
        for i, g in enumerate(grads):
            params, state = rule.update(params, da.from_array(g, chunks=(1000, 64)), state)
            if i % 4 == 3:  # keep the graph short, as a long loop would
                params, state.slots = dask.persist(params, state.slots)  # on the cluster (default client)
                distributed.wait([params])
        holders = [worker for worker, keys in client.has_what().items() if keys]
        got = params.compute()
    assert len(holders) == 2, "the step did not run on both worker processes"
    assert same_bits(got, want)
