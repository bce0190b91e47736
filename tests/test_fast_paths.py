"""CPU fast paths give the reference bits: every rule and option, every dtype, NumPy and torch."""

from __future__ import annotations

import re
from typing import NamedTuple

import numpy as np
import pytest

import portopt
from conftest import TARGETS
from helpers import VARIANTS, make_rule, same_bits, same_bits_any_nan, variant_id
from portopt.fast import blocked
from portopt.kernels import cpu as compiled
from portopt.kernels.trace import trace

SIZE = 1000 + 17  # with the small blocks below: several blocks, chunks and threads, a ragged end
MODES = [pytest.param("blocked"),
         pytest.param("compiled", marks=pytest.mark.skipif(not compiled.available(), reason="numba is not installed"))]


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks, chunks and the threads' threshold a few hundred elements, so that small arrays
    take every branch a large one takes (the arithmetic does not depend on the sizes)."""
    monkeypatch.setattr(blocked, "BLOCK", 96)
    monkeypatch.setattr(compiled, "CHUNK", 64)
    monkeypatch.setattr(compiled, "PARALLEL_THRESHOLD", 256)


def _tree(dtype, seed):
    """A tree of leaves a model has: a long vector, a matrix, a 0-d array, an empty one, a
    strided view (which takes the reference path inside the same step)."""
    rng = np.random.default_rng(seed)
    if dtype == "bfloat16":
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
        info = ml_dtypes.finfo(dtype)
    else:
        info = np.finfo(dtype)

    def values(n):
        x = rng.standard_normal(n) * 2.0 ** rng.integers(-20, 5, n)
        x[:8] = [0.0, -0.0, info.smallest_subnormal, -info.smallest_subnormal, info.max, -info.max, np.nan, np.inf][:n]
        x[8:16] = 0.0  # with eps=0 below: 0/0 and x/0 in the update
        return x.astype(dtype)

    return {"long": values(SIZE), "matrix": values(7 * 13).reshape(7, 13), "scalar": values(1).reshape(()),
            "empty": values(0), "every_other": values(2 * 33)[::2]}


def _params(seed, dtype):
    return {k: np.abs(v) + 0.5 if v.size else v for k, v in _tree(dtype, seed).items()}


def _run(target, rule, dtype, mode, api, steps=12):
    asarray, to_numpy = target.asarray, target.to_numpy
    if dtype == "bfloat16":  # torch tensors from ml_dtypes' bits; compared widened to float32 (exact)
        import torch

        def asarray(x):
            return torch.from_numpy(np.ascontiguousarray(x).view(np.uint16).copy()).view(torch.bfloat16)

        def to_numpy(x):
            return x.float().numpy()
    params = {k: asarray(np.ascontiguousarray(v)) for k, v in _params(0, dtype).items()}
    base = asarray(np.repeat(np.asarray(_params(0, dtype)["every_other"]), 2))
    params["every_other"] = base[::2]  # a view on the backend
    state = rule.init(params)
    with portopt.fast_path(mode), np.errstate(all="ignore"):
        for step in range(steps):
            grads = {k: asarray(np.ascontiguousarray(v)) for k, v in _tree(dtype, 100 + step).items()}
            if api == "step":
                rule.step(params, grads, state)
            else:
                params, state = rule.update(params, grads, state)
    flat = lambda tree: [to_numpy(tree[k]) for k in sorted(tree)]  # noqa: E731
    return flat(params), [flat(state.slots[s]) for s in rule.slot_names()]


def _backend_dtypes():
    """(backend, dtype): every float dtype each backend has (bfloat16: torch)."""
    pairs = [(b, d) for b in ("numpy", "torch-cpu") if b in TARGETS for d in ("float16", "float32", "float64")]
    if "torch-cpu" in TARGETS:
        pairs.append(("torch-cpu", "bfloat16"))
    return pairs


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("backend, dtype", _backend_dtypes())
@pytest.mark.parametrize("variant", VARIANTS, ids=[variant_id(v) for v in VARIANTS])
def test_fast_path_gives_the_reference_bits(variant, dtype, mode, backend, small_blocks):
    """``step`` and ``update`` under each fast path give the bits of the reference (``update``
    with the fast path off), leaf by leaf, for a tree that mixes contiguous leaves with a view
    (one compiled call for all of them, the view through a C-order copy)."""
    target = TARGETS[backend]
    rule = make_rule(variant)
    if "eps" in rule.hyperparameters() and variant["name"] == "defaults":
        rule = type(rule)(**{**rule.hyperparameters(), "eps": 0.0})  # divisions by zero must not raise
    reference = _run(target, rule, dtype, "off", "update")
    assert not same_bits(reference[0][1], _params(0, dtype)["long"])
    for api in ("step", "update"):
        fast = _run(target, rule, dtype, mode, api)
        # NaN sign is outside the contract: numba negates a NaN by subtraction, NumPy by flipping its sign.
        for a, b in zip(fast[0] + sum(fast[1], []), reference[0] + sum(reference[1], [])):
            assert same_bits_any_nan(a, b), api


def test_numpy_addresses_read_in_one_call_are_each_arrays_data_pointer():
    from portopt.backends import numpy_adapter

    if numpy_adapter._field_reader() is None:
        pytest.skip("needs numba and NumPy's data pointer where portopt reads it")
    base = np.arange(60.0).reshape(6, 10)
    arrays = [base, base[2], base[3:], np.zeros(()), np.zeros(0), np.ones(5, np.float32), base[:, 1],
              np.zeros((2, 3), np.float16)]
    adapter = numpy_adapter.NumpyAdapter(np)
    expected = [x.ctypes.data for x in arrays]
    assert adapter.planned_addresses(arrays).tolist() == expected
    # an ndarray subclass is read one by one (the compiled reader takes exact ndarrays only)
    mixed = [*arrays, np.ma.masked_array([1.0, 2.0])]
    assert adapter.planned_addresses(mixed).tolist() == [*expected, mixed[-1].ctypes.data]


@pytest.mark.skipif(not compiled.available(), reason="numba is not installed")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_update_reads_addresses_one_by_one_where_no_compiled_reader_is_with_the_same_bits(dtype, monkeypatch,
                                                                                         small_blocks):
    from portopt.backends import numpy_adapter

    rule = portopt.AdamW(lr=0.1, eps=0.0)
    reference = _run(TARGETS["numpy"], rule, dtype, "off", "update")
    monkeypatch.setattr(numpy_adapter, "_field_reader", lambda: None)
    one_by_one = _run(TARGETS["numpy"], portopt.AdamW(lr=0.1, eps=0.0), dtype, "compiled", "update")
    for a, b in zip(one_by_one[0] + sum(one_by_one[1], []), reference[0] + sum(reference[1], [])):
        assert same_bits_any_nan(a, b)


# plain, with a global reduction before the loop, with a first-step flag, with a host norm
_TEAM_VARIANTS = ("Adam-defaults", "Adam-clipped", "SGD-plain", "AdaGradNorm-maximize")


def _team_or_skip():
    pytest.importorskip("torch")
    from portopt.kernels import team

    if not compiled.available() or team.parallel() is None:
        pytest.skip("needs numba and a torch on GNU OpenMP (libgomp loaded): Linux builds")
    return team


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
@pytest.mark.parametrize("variant", [v for v in VARIANTS if variant_id(v) in _TEAM_VARIANTS], ids=variant_id)
def test_torchs_openmp_team_runs_large_calls_with_the_thread_pools_bits(variant, dtype, small_blocks, monkeypatch):
    """Where torch runs on libgomp, a call large enough for threads runs as a parallel region of
    torch's own OpenMP team (its threads still spin after torch's last operation): the same loop,
    so the pool's bits and the reference's, and the team is what ran."""
    team = _team_or_skip()
    target = TARGETS["torch-cpu"] if dtype == "bfloat16" else TARGETS["numpy"]
    rule = make_rule(variant)
    reference = _run(target, rule, dtype, "off", "update")
    calls = []
    real = team.parallel()
    monkeypatch.setattr(team, "parallel", lambda: lambda entry, data: (calls.append(entry), real(entry, data))[1])
    on_team = {api: _run(target, rule, dtype, "compiled", api) for api in ("step", "update")}
    assert len(calls) >= 2 * 12  # every step of both APIs, one region each
    monkeypatch.setattr(team, "parallel", lambda: None)
    on_pool = {api: _run(target, rule, dtype, "compiled", api) for api in ("step", "update")}
    for api in ("step", "update"):
        flat = lambda run: run[0] + sum(run[1], [])  # noqa: E731
        for a, b, c in zip(flat(on_team[api]), flat(on_pool[api]), flat(reference)):
            assert same_bits(a, b), api
            assert same_bits_any_nan(a, c), api


def test_a_torch_still_being_imported_is_asked_again_later(monkeypatch):
    """Another thread importing torch while a step asks: no team yet, and none decided for good."""
    import sys
    import types

    team = _team_or_skip()
    half = types.ModuleType("torch")
    half.__spec__ = types.SimpleNamespace(_initializing=True)
    monkeypatch.setitem(sys.modules, "torch", half)
    assert team.parallel() is None
    monkeypatch.undo()
    assert team.parallel() is not None


def test_the_openmp_team_is_used_only_once_torch_is_imported():
    import subprocess
    import sys

    pytest.importorskip("torch")
    code = ("from portopt.kernels import team; before = team.parallel(); import torch; "
            "print(before is None, team.parallel() is not None, "
            "'parallel backend: OpenMP' in torch.__config__.parallel_info())")
    before_none, after, openmp = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                                check=True).stdout.split()
    assert before_none == "True"
    assert after == openmp  # a team exactly where torch runs on OpenMP


_LARGE_STEP = """
import os, signal, sys, threading
import numpy as np, torch, portopt
from portopt.kernels import team

def large_step():
    p = np.zeros(1 << 18, np.float32); rule = portopt.Adam(); state = rule.init(p)
    rule.step(p, np.ones_like(p), state)
    return p
"""


def _run_script(body: str) -> list[str]:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", _LARGE_STEP + body], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork (POSIX)")
@pytest.mark.parametrize("parent", ["ran a torch operation", "stepped on the pool", "stepped on the team"])
def test_a_forked_child_steps_large_arrays_with_the_parents_bits(parent):
    """A child forked after torch's OpenMP threads or portopt's pool ran has neither's threads:
    its large step must not wait for them (it takes a pool of its own) and gives the same bits."""
    pytest.importorskip("torch")
    if not compiled.available():
        pytest.skip("numba is not installed")
    setup = {"ran a torch operation": "torch.ones(1 << 20).sum()",
             "stepped on the pool": "torch.ones(1 << 20).sum(); real = team.parallel; team.parallel = lambda: None; "
                                    "large_step(); team.parallel = real",
             "stepped on the team": "torch.ones(1 << 20).sum(); large_step()"}[parent]
    out = _run_script(f"""
{setup}
expected = large_step()
pid = os.fork()
if pid == 0:
    signal.alarm(60)  # a deadlock ends the child, not the test run
    os._exit(0 if np.array_equal(large_step().view(np.int32), expected.view(np.int32)) else 3)
_, status = os.waitpid(pid, 0)
print(os.WIFEXITED(status) and os.WEXITSTATUS(status))
""")
    assert out == ["0"], "the child did not finish its step with the parent's bits"


@pytest.mark.skipif(not __import__("os").path.isdir("/proc/self/task"), reason="counts threads in /proc/self/task")
def test_the_team_keeps_torchs_thread_count_in_a_thread_torch_never_ran_in():
    """``torch.set_num_threads(1)`` holds for a large step from a new Python thread too (libgomp's
    default is per thread, and torch sets it only at a thread's first parallel operation)."""
    _team_or_skip()
    out = _run_script("""
torch.set_num_threads(1)
large_step()
counts = []
def count_threads():
    before = len(os.listdir("/proc/self/task")); large_step(); counts.append(len(os.listdir("/proc/self/task")) - before)
worker = threading.Thread(target=count_threads); worker.start(); worker.join()
print(counts[0], team.parallel() is not None)
""")
    assert out == ["0", "True"], "a team of more than torch's one thread was started"


def _first_scalars(rule):
    """The host scalars of a rule's first step (AdaGrad-Norm's from a gradient of ones)."""
    import array_api_compat.numpy as xp

    inner = getattr(rule, "rule", rule)  # a Clipped rule wraps the rule that has the kernel
    extra, _ = inner.advance_host_state(0, inner.initial_host_state(), xp, [np.ones(3)], [np.ones(3)])
    scalars = inner.host_scalars(0)
    return inner, scalars._replace(**extra) if extra else scalars


def _first_of_each_rule():
    """Default tier: each rule's first variant; long tier: all (half a second of compiling each)."""
    seen: set = set()
    params = []
    for variant in VARIANTS:
        first = variant["rule"] not in seen
        seen.add(variant["rule"])
        params.append(pytest.param(variant, id=variant_id(variant), marks=() if first else pytest.mark.long))
    return params


@pytest.mark.skipif(not compiled.available(), reason="numba is not installed")
@pytest.mark.parametrize("variant", _first_of_each_rule())
def test_generated_loops_have_no_fused_multiply_add(variant):
    inner, scalars = _first_scalars(make_rule(variant))
    slot_count = len(inner.slot_names())
    for dtype in (np.float32, np.float64):
        loops = compiled.loops_for(inner.kernel, scalars, slot_count, np.dtype(dtype))
        module = compiled.uncached_module(loops)  # fresh machine code to inspect, not the disk cache's
        arrays = [np.ones(4, dtype) for _ in range(2 + slot_count)]
        table = compiled.Table([4], slot_count)
        read = np.array([[a.ctypes.data] for a in arrays], dtype=np.int64)
        for name in ("table_loop", "table_loop_in_place"):
            loop = getattr(module, name)
            loop(read, np.delete(read, 1, axis=0), table.sizes, table.chunk_leaf, table.chunk_start,
                 table.chunk_stop, loops.scalars(scalars))
            assembly = loop.inspect_asm(loop.signatures[-1]).lower()
            if "math.sqrt" in loops.source:  # the root is the hardware's correctly rounded instruction
                assert "sqrtss" in assembly or "sqrtsd" in assembly or "sqrtps" in assembly or "sqrtpd" in assembly
            assert "vfmadd" not in assembly and "vfmsub" not in assembly and "vfnmadd" not in assembly, name
            assert re.search(r"\bv?(mul|add|sub|div)p[sd]\b", assembly), f"{name} is not vectorised"


def _views(backend, dtype, seed):
    """Leaves with no address, made on the backend: a transposed view, every third element, a
    reversed view (NumPy) or a negative view (torch: the values it shows are the negated
    memory), and a contiguous leaf beside them; host copies of the same values."""
    rng = np.random.default_rng(seed)
    host = {"transposed": rng.standard_normal((6, 4)), "every_third": rng.standard_normal(7),
            "flipped": rng.standard_normal(5), "dense": rng.standard_normal(3)}
    host = {k: v.astype(dtype) for k, v in host.items()}
    target = TARGETS[backend]
    views = {"transposed": target.asarray(np.ascontiguousarray(host["transposed"].T)).T,
             "every_third": target.asarray(np.repeat(host["every_third"], 3))[::3],
             "dense": target.asarray(host["dense"])}
    if backend == "numpy":
        views["flipped"] = np.ascontiguousarray(host["flipped"][::-1])[::-1]
    else:
        views["flipped"] = target.asarray(-host["flipped"])._neg_view()
    return host, {k: views[k] for k in host}


def _broadcast(backend, row, shape):
    """A gradient whose elements share memory (a zero stride): read only, so allowed."""
    target = TARGETS[backend]
    if backend == "numpy":
        return np.broadcast_to(row, shape)
    return target.asarray(row).expand(*shape)


@pytest.mark.parametrize("backend", [b for b in ("numpy", "torch-cpu") if b in TARGETS])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_strided_views_are_staged_through_the_compiled_loop_with_the_reference_bits(backend, dtype, monkeypatch):
    """Params and gradients with no address (transposed, every third element, reversed or
    negative views, a broadcast gradient) go through the compiled loop on C-order copies,
    written back into their memory: ``step`` and ``update``, and their lanes, give the
    reference's bits, and nothing falls back to the reference path."""
    from portopt import optimizer

    if not compiled.available():
        pytest.skip("staging is the compiled path's; numba is not installed")
    target = TARGETS[backend]
    steps = 5
    host, views = _views(backend, dtype, 0)
    rng = np.random.default_rng(1)
    host_grads = [{k: rng.standard_normal(np.shape(v)).astype(dtype) for k, v in host.items()} for _ in range(steps)]
    for g in host_grads:
        g["dense"] = np.broadcast_to(g["dense"][:1], (3,))
    rule = portopt.Adam(lr=0.1, weight_decay=0.01, amsgrad=True)
    with portopt.fast_path("off"):
        expected, state = host, rule.init(host)
        for g in host_grads:
            expected, state = rule.update(expected, g, state)

    def backend_grads(g):
        strided = target.asarray(np.repeat(g["every_third"], 2))[::2]  # a strided gradient too
        return {"transposed": target.asarray(np.ascontiguousarray(g["transposed"])), "every_third": strided,
                "flipped": target.asarray(g["flipped"]), "dense": _broadcast(backend, g["dense"][:1], (3,))}

    taken = []
    for name in ("prepare_repeat", "repeat_update"):
        original = getattr(optimizer, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            result = _original(*args, **kwargs)
            taken.append((_name, result[0] is not None))
            return result

        monkeypatch.setattr(optimizer, name, counted)
    stepper, updater = portopt.Adam(lr=0.1, weight_decay=0.01, amsgrad=True), portopt.Adam(lr=0.1, weight_decay=0.01,
                                                                                            amsgrad=True)
    with portopt.fast_path("compiled"), np.errstate(all="ignore"):
        in_place = stepper.init(views)
        params = _views(backend, dtype, 0)[1]  # views of their own: step writes into the others
        updated = updater.init(params)
        for g in host_grads:
            stepper.step(views, backend_grads(g), in_place)
            params, updated = updater.update(params, backend_grads(g), updated)
    # update's lane from its third call: the first returns C-order arrays, a new signature
    assert taken.count(("prepare_repeat", True)) == steps - 1 and taken.count(("repeat_update", True)) == steps - 2
    plan = stepper.__dict__["_plans"][True]
    assert [group.executor for group in plan.groups] == ["compiled"] and plan.groups[0].staged
    for k in host:
        for got, got_state in ((views[k], in_place), (params[k], updated)):
            assert same_bits(target.to_numpy(got), expected[k]), k
            for slot in state.slots:
                assert same_bits(target.to_numpy(got_state.slots[slot][k]), state.slots[slot][k]), (slot, k)


class _Scalars(NamedTuple):
    flag: bool
    lr: float


def test_tracing_refuses_what_a_fast_path_cannot_keep():
    def bare_float(xp, s, p, g):
        return (p - 0.1 * g,)

    def branch_on_values(xp, s, p, g):
        return (p if g > p else g,)

    def misspelled(xp, s, p, g):
        return (p - s.learning_rate * g,)

    scalars = _Scalars(flag=True, lr=0.1)
    with pytest.raises(TypeError, match="bare float"):
        trace(bare_float, scalars, 0)
    with pytest.raises(TypeError, match="branched on an array value"):
        trace(branch_on_values, scalars, 0)
    with pytest.raises(TypeError, match="learning_rate"):
        trace(misspelled, scalars, 0)


def test_scalars_must_say_which_fields_are_flags():
    class Untyped(NamedTuple):
        lr: int

    with pytest.raises(TypeError, match="lr"):
        trace(lambda xp, s, p, g: (p,), Untyped(lr=1), 0)


def test_fast_path_modes_are_checked():
    with pytest.raises(ValueError, match="fast path mode must be one of"):
        portopt.set_fast_path("turbo")
    assert portopt.get_fast_path() in ("auto", "compiled", "blocked", "off")
