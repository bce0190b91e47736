"""A schedule is user code: every step runs it once, before any check of the arrays (so it
cannot move an array a check saw), and after the state's own checks (so a malformed state gets
the first step's error). Found by independent attackers; each test is one class of their cases."""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

import portopt
from conftest import TARGETS

needs_torch = pytest.mark.skipif("torch-cpu" not in TARGETS, reason="torch is not installed")


def _failing(step):
    raise ZeroDivisionError(f"the schedule failed at step {step}")


@needs_torch
@pytest.mark.parametrize("name", ["Adam", "NAdam", "ASGD", "RAdam", "SGD"])
def test_a_schedule_that_moves_the_param_runs_once_per_step_and_the_new_memory_is_stepped(name):
    import torch

    p = torch.linspace(-1, 1, 40_000, dtype=torch.float64)
    g = torch.full_like(p, 0.5)
    calls, left = [], []

    def lr(step):
        calls.append(step)
        if step == 3 and not left:
            left.append(p.data)
            p.set_(p.clone())
        return 0.01

    rule = getattr(portopt, name)(lr=lr)
    twin = getattr(portopt, name)(lr=0.01)
    state = rule.init(p)
    calls.clear()  # ASGD evaluates lr at step 0 in init
    expected, expected_state = p.clone(), twin.init(p)
    for _ in range(6):
        rule.step(p, g, state)
        expected, expected_state = twin.update(expected, g, expected_state)
    assert calls == list(range(6))
    assert torch.equal(p, expected)
    assert not torch.equal(left[0], p)  # the memory the param left was not written after it left


MALFORMED = {
    "another rule's state": lambda p: portopt.SGD(momentum=0.9).init(p),
    "a torn state": lambda p: _torn(portopt.Adam(lr=0.1).init(p)),
    "a slot missing": lambda p: _without_slot(portopt.Adam(lr=0.1).init(p)),
    "a negative step": lambda p: _with_step(portopt.Adam(lr=0.1).init(p), -1),
    "an extra slot": lambda p: _with_slots(portopt.Adam(lr=0.1).init(p), lambda slots: {**slots, "extra": p}),
    "slots as a list": lambda p: _with_slots(portopt.Adam(lr=0.1).init(p), lambda slots: list(slots.values())),
    "a host value Adam has not": lambda p: _with_host(portopt.Adam(lr=0.1).init(p), lambda host: {**host, "eta": 1.0}),
    "host values as a list": lambda p: _with_host(portopt.Adam(lr=0.1).init(p), lambda host: list(host.values())),
}


def _with_slots(state, change):
    state.slots = change(state.slots)
    return state


def _with_host(state, change):
    state.host = change(state.host)
    return state


def _torn(state):
    state.torn = True
    return state


def _without_slot(state):
    del state.slots["exp_avg"]
    return state


def _with_step(state, step):
    state.step = step
    return state


def _first_steps_error(malformed, api, p):
    """The error a fresh Adam's first step gives on the malformed state."""
    with pytest.raises(Exception) as expected:
        getattr(portopt.Adam(lr=0.1), api)(p.copy(), p.copy(), MALFORMED[malformed](p))
    return expected


@pytest.mark.parametrize("api", ["step", "update"])
@pytest.mark.parametrize("malformed", list(MALFORMED))
def test_a_malformed_state_gets_its_own_error_before_a_failing_schedule(malformed, api):
    p = np.ones(3)
    expected = _first_steps_error(malformed, api, p)
    with pytest.raises(type(expected.value)) as raised:
        getattr(portopt.Adam(lr=_failing), api)(p.copy(), p.copy(), MALFORMED[malformed](p))
    assert str(raised.value) == str(expected.value)
    assert "unhashable" not in str(expected.value)  # a message that names what is wrong


@pytest.mark.parametrize("api", ["step", "update"])
@pytest.mark.parametrize("malformed", list(MALFORMED))
def test_a_malformed_state_after_warm_steps_gets_a_first_steps_error(malformed, api):
    """The cached plan of earlier steps lets no malformed state through, nor fails on it otherwise."""
    p = np.ones(3)
    expected = _first_steps_error(malformed, api, p)
    warm, params = portopt.Adam(lr=0.1), p.copy()
    state = warm.init(params)
    for _ in range(3):
        warm.step(params, p, state)
        params, state = warm.update(params, p, state)
    with pytest.raises(type(expected.value)) as raised:
        getattr(warm, api)(params, p.copy(), MALFORMED[malformed](params))
    assert str(raised.value) == str(expected.value)


@pytest.mark.parametrize("inputs", ["a wrong grad shape", "another grads tree"])
def test_a_partitions_step_and_update_give_one_error(inputs):
    opt = portopt.partition({"a": portopt.Adam(lr=0.1), "b": portopt.Adam(lr=_failing)}, {"x": "a", "y": "b"})
    params = {"x": np.ones(3), "y": np.ones(3)}
    grads = {"x": np.ones(4), "y": np.ones(3)} if inputs == "a wrong grad shape" else {"x": np.ones(3)}
    errors = []
    for api in ("step", "update"):
        state = opt.init(params)
        with pytest.raises(Exception) as raised:
            getattr(opt, api)(params, grads, state)
        errors.append((type(raised.value), str(raised.value)))
    assert errors[0] == errors[1]


@needs_torch
def test_a_nested_partitions_schedule_runs_before_the_outer_sharing_check():
    import torch

    a, b = torch.ones(4, dtype=torch.float64), torch.full((4,), 2.0, dtype=torch.float64)

    def lr(step):
        if step == 1:
            b.set_(a)
        return 0.1

    inner = portopt.partition({"y": portopt.SGD(lr=lr)}, ["y"])
    opt = portopt.partition({"x": portopt.SGD(lr=0.1), "y": inner}, {"a": "x", "b": "y"})
    params = {"a": a, "b": b}
    state = opt.init(params)
    grads = {"a": torch.ones(4, dtype=torch.float64), "b": torch.ones(4, dtype=torch.float64)}
    opt.step(params, grads, state)
    with pytest.raises(ValueError, match="share memory"):
        opt.step(params, grads, state)
    assert torch.equal(a, torch.full((4,), 0.9, dtype=torch.float64))


def test_partitions_are_named_as_given():
    opt = portopt.partition({"a": portopt.Adam(), "b": portopt.SGD()}, {"x": "a", "y": "b"})
    assert opt.name == "partition" and opt.init({"x": np.ones(2), "y": np.ones(2)}).rule == "partition"
    assert portopt.masked(portopt.Adam(), {"x": True, "y": False}).name == "masked(Adam)"


@needs_torch
def test_the_drop_ins_sparse_gradient_error_comes_first_after_warm_steps():
    import portopt.torch as drop_ins
    import torch

    failing = [False]

    def lr(step):
        if failing[0]:
            raise ZeroDivisionError("schedule")
        return 0.1

    for warm in (0, 1, 2):
        failing[0] = False
        w = torch.nn.Parameter(torch.ones(3))
        opt = drop_ins.Adam([w], lr=lr)
        for _ in range(warm):
            w.grad = torch.ones(3)
            opt.step()
        w.grad = torch.ones(3).to_sparse()
        failing[0] = True
        with pytest.raises(TypeError, match="sparse"):
            opt.step()


# --- the shim's compile and cache ------------------------------------------------------------------
def test_a_shim_compile_that_fails_stops_the_step_before_any_write(monkeypatch):
    from portopt.kernels import host_shim

    if host_shim.compiler() is None:
        pytest.skip("no C++ compiler here")
    monkeypatch.setattr(host_shim, "compiler", lambda: "/bin/false")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    rule = portopt.Adam(lr=0.1)
    params = {"a": np.ones(3, ml_dtypes.bfloat16), "b": np.ones(3, np.float32)}
    grads = {"a": np.ones(3, ml_dtypes.bfloat16), "b": np.ones(3, np.float32)}
    state = rule.init(params)
    with portopt.fast_path("shim"), pytest.raises(subprocess.CalledProcessError):
        rule.step(params, grads, state)
    assert state.step == 0 and not state.torn
    assert np.all(params["a"] == 1) and np.all(params["b"] == 1)


def test_threads_that_build_one_shim_kernel_at_once_all_get_it(tmp_path, monkeypatch):
    import os
    import threading

    from portopt.kernels import host_shim

    real = host_shim.compiler()
    if real is None:
        pytest.skip("no C++ compiler here")
    alias = tmp_path / "c++"
    os.symlink(real, alias)  # another compiler path: digests no earlier build made
    monkeypatch.setattr(host_shim, "compiler", lambda: str(alias))
    errors = []

    def work():
        rule = portopt.SGD(lr=0.1)
        p = np.ones(4, np.float32)
        try:
            with portopt.fast_path("shim"):
                rule.step(p, np.ones(4, np.float32), rule.init(p))
            assert np.all(p == np.float32(0.9))
        except Exception as error:  # noqa: BLE001 - collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
