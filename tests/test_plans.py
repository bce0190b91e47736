"""Cached step plans never let a changed input through: after a first step, a leaf swapped for
one of another shape, dtype, device, backend or writeability (or a tree of another structure)
gets the error a first step gets, and nothing is written."""

from __future__ import annotations

import numpy as np
import pytest

import portopt
from conftest import TARGETS


def _setup(rule, make):
    params = {"w": make(np.arange(1.0, 7.0).reshape(2, 3)), "b": make(np.ones(3))}
    grads = {"w": make(np.full((2, 3), 0.5)), "b": make(np.full(3, 0.25))}
    state = rule.init(params)
    rule.step(params, grads, state)  # the plan is made and cached here
    return params, grads, state


def _snapshot(params, state):
    def host(x):
        return x.detach().numpy().copy() if hasattr(x, "detach") else np.array(x, copy=True)

    return ({k: host(v) for k, v in params.items()},
            {name: {k: host(v) for k, v in tree.items()} for name, tree in state.slots.items()}, state.step)


def _unchanged(before, params, state):
    after = _snapshot(params, state)
    assert after[2] == before[2]
    for k in before[0]:
        assert before[0][k].tobytes() == after[0][k].tobytes(), f"params[{k!r}] was written"
    for name in before[1]:
        for k in before[1][name]:
            assert before[1][name][k].tobytes() == after[1][name][k].tobytes(), f"{name}[{k!r}] was written"


def _first_step_error(rule, params, grads, state_of):
    """The error a fresh rule (no cached plan) raises for the same inputs."""
    fresh = type(rule)(**rule.hyperparameters())
    with pytest.raises(Exception) as first:
        fresh.step(params, grads, state_of(fresh))
    return first.value


SWAPS = {
    "grad of another shape": lambda p, g, s: (p, {**g, "b": np.full(4, 0.25)}, s),
    "grad of another dtype": lambda p, g, s: (p, {**g, "b": np.full(3, 0.25, np.float32)}, s),
    "param of another dtype": lambda p, g, s: ({**p, "w": p["w"].astype(np.float32)}, g, s),
    "read-only param": lambda p, g, s: ({**p, "b": _read_only(p["b"])}, g, s),
    "read-only slot": lambda p, g, s: (p, g, _with_slot(s, "exp_avg", "b", _read_only(s.slots["exp_avg"]["b"]))),
    "slot of another shape": lambda p, g, s: (p, g, _with_slot(s, "exp_avg_sq", "w", np.zeros(6))),
    "grad tree of another structure": lambda p, g, s: (p, {"w": g["w"]}, s),
    "param tree with keys in another order": lambda p, g, s: ({"b": p["b"], "w": p["w"]}, g, s),
    "grad of another backend": lambda p, g, s: (p, {**g, "b": _strict(g["b"])}, s),
    "non-float param": lambda p, g, s: ({**p, "b": np.ones(3, np.int64)}, g, s),
}


def _read_only(x):
    y = x.copy()
    y.flags.writeable = False
    return y


def _with_slot(state, name, key, value):
    slots = {k: dict(v) for k, v in state.slots.items()}
    slots[name][key] = value
    return portopt.State(rule=state.rule, step=state.step, slots=slots)


def _strict(x):
    array_api_strict = pytest.importorskip("array_api_strict")
    return array_api_strict.asarray(x)


@pytest.mark.parametrize("swap", list(SWAPS))
def test_a_swapped_leaf_gets_the_first_steps_error_and_nothing_is_written(swap):
    rule = portopt.Adam(lr=0.1)
    params, grads, state = _setup(rule, lambda a: a)
    new_params, new_grads, new_state = SWAPS[swap](params, grads, state)
    expected = _first_step_error(rule, new_params, new_grads,
                                 lambda fresh: new_state if new_state is not state else _copy_state(state))
    before = _snapshot(params, state)
    with pytest.raises(type(expected)) as raised:
        rule.step(new_params, new_grads, new_state)
    assert str(raised.value) == str(expected)
    _unchanged(before, params, state)
    if "read-only" not in swap:  # update writes nothing, so read-only arrays are fine there
        rule.update(params, grads, state)  # update's own lane is cached here
        with pytest.raises(type(expected)) as raised:
            rule.update(new_params, new_grads, new_state)
        assert str(raised.value) == str(expected)


def _copy_state(state):
    return portopt.State(rule=state.rule, step=state.step,
                         slots={k: {kk: vv.copy() for kk, vv in v.items()} for k, v in state.slots.items()})


def test_a_leaf_changed_in_place_is_checked_again():
    """Not only a new object: an array whose flags change between steps is caught too."""
    rule = portopt.Adam(lr=0.1)
    params, grads, state = _setup(rule, lambda a: a)
    before = _snapshot(params, state)
    params["w"].flags.writeable = False
    with pytest.raises(TypeError, match=r"params\['w'\] is read-only"):
        rule.step(params, grads, state)
    params["w"].flags.writeable = True
    _unchanged(before, params, state)
    rule.step(params, grads, state)  # and it steps again once the array is as before
    assert state.step == 2


@pytest.mark.skipif("torch-cpu" not in TARGETS, reason="torch is not installed")
def test_torch_tensor_swaps_are_caught():
    import torch

    rule = portopt.Adam(lr=0.1)
    params, grads, state = _setup(rule, lambda a: torch.from_numpy(a.copy()))
    before = _snapshot(params, state)
    cases = {
        "device meta": {**grads, "b": torch.full((3,), 0.25, dtype=torch.float64, device="meta")},
        "negative bit": {**grads, "b": torch._neg_view(torch.full((3,), 0.25, dtype=torch.float64))},
        "dtype": {**grads, "b": torch.full((3,), 0.25, dtype=torch.float32)},
        "numpy in a torch tree": {**grads, "b": np.full(3, 0.25)},
    }
    for name, swapped in cases.items():
        fresh = portopt.Adam(lr=0.1)
        try:
            fresh.step({k: v.clone() for k, v in params.items()}, swapped, _copy_torch_state(state))
            first = None
        except Exception as error:  # noqa: BLE001 - the first step's own error, whatever it is
            first = error
        if first is None:
            # the first step accepts it (e.g. a negative-bit view reads its values correctly):
            # the cached plan must give the same bits as the first step would
            expected = {k: v.clone() for k, v in params.items()}
            expected_state = _copy_torch_state(state)
            portopt.Adam(lr=0.1).step(expected, swapped, expected_state)
            got, got_state = {k: v.clone() for k, v in params.items()}, _copy_torch_state(state)
            rule.step(got, swapped, got_state)
            assert all(torch.equal(got[k], expected[k]) for k in got), name
            continue
        with pytest.raises(type(first)) as raised:
            rule.step(params, swapped, state)
        assert str(raised.value) == str(first), name
        _unchanged(before, params, state)


def _copy_torch_state(state):
    return portopt.State(rule=state.rule, step=state.step,
                         slots={k: {kk: vv.clone() for kk, vv in v.items()} for k, v in state.slots.items()})


# --- the repeated step: the same arrays again (portopt.plan.prepare_repeat) -----------------------
def _reshaped(x, shape):
    x.shape = shape  # in place: the same object, another shape
    return x


IN_PLACE_CHANGES = {
    "param reshaped in place": lambda p, g, s: _reshaped(p["w"], (3, 2)),
    "grad reshaped in place": lambda p, g, s: _reshaped(g["w"], (6,)),
    "slot reshaped in place": lambda p, g, s: _reshaped(s.slots["exp_avg"]["w"], (3, 2)),
    "slot made read-only": lambda p, g, s: setattr(s.slots["exp_avg_sq"]["b"].flags, "writeable", False),
    "grad replaced in its tree": lambda p, g, s: g.__setitem__("b", np.full(4, 0.25)),
    "slot replaced in its tree": lambda p, g, s: s.slots["exp_avg"].__setitem__("b", np.zeros(3, np.float32)),
    "step made a bool": lambda p, g, s: setattr(s, "step", True),
    "step made negative": lambda p, g, s: setattr(s, "step", -1),
    "state of another rule": lambda p, g, s: setattr(s, "rule", "AdamW"),
}


def _copy_keeping_flags(x):
    y = x.copy()
    y.flags.writeable = x.flags.writeable
    return y


@pytest.mark.parametrize("change", list(IN_PLACE_CHANGES))
def test_the_same_arrays_changed_in_place_get_the_first_steps_error(change):
    """After two steps on the same arrays (the repeated step's tables are reused), an array
    changed in place, or a tree or the state edited, gets a fresh rule's error; nothing is written."""
    rule = portopt.Adam(lr=0.1)
    params, grads, state = _setup(rule, lambda a: a)
    rule.step(params, grads, state)
    IN_PLACE_CHANGES[change](params, grads, state)
    fresh_state = portopt.State(rule=state.rule, step=state.step,
                                slots={k: {kk: _copy_keeping_flags(vv) for kk, vv in v.items()}
                                       for k, v in state.slots.items()})
    expected = _first_step_error(rule, params, grads, lambda fresh: fresh_state)
    before = _snapshot(params, state)
    with pytest.raises(type(expected)) as raised:
        rule.step(params, grads, state)
    assert str(raised.value) == str(expected)
    _unchanged(before, params, state)


def _variants_on_numpy():
    from helpers import VARIANTS, variant_id

    return [pytest.param(v, id=variant_id(v)) for v in VARIANTS]


@pytest.mark.parametrize("variant", _variants_on_numpy())
def test_steps_on_the_same_arrays_give_the_bits_of_update(variant):
    """A training loop's pattern: the gradients refilled in place, the same params and state
    each step; in place (the repeated step) and through update, every variant, the same bits.
    A gradient that is the param itself, one step in, is read as update reads it (a copy)."""
    from helpers import make_rule, random_arrays, same_bits

    rule = make_rule(variant)
    values = random_arrays(3, (7,), "float32", 12)
    params = {"w": random_arrays(4, (7,), "float32", 1)[0], "b": np.ones(3, np.float32)}
    grads = {"w": np.empty(7, np.float32), "b": np.empty(3, np.float32)}
    pure, pure_state = {k: v.copy() for k, v in params.items()}, rule.init(params)
    state = rule.init(params)
    for k, g in enumerate(values):
        grads["w"][...] = g
        grads["b"][...] = g[:3]
        step_grads = {**grads, "b": params["b"]} if k == 5 else grads  # aliasing, once
        pure, pure_state = rule.update(pure, {k2: v.copy() for k2, v in step_grads.items()}, pure_state)
        rule.step(params, step_grads, state)
    assert state.step == pure_state.step == len(values)
    for key in params:
        assert same_bits(params[key], pure[key]), key
        for name in state.slots:
            assert same_bits(state.slots[name][key], pure_state.slots[name][key]), (name, key)


# --- sharing and moved memory after warm steps --------------------------------------------------
def _list_setup(rule, warm: int):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(8), rng.standard_normal(8)]
    grads = [rng.standard_normal(8), rng.standard_normal(8)]
    state = rule.init(params)
    for _ in range(warm):
        rule.step(params, grads, state)
    return params, grads, state


NEW_SHARING = {
    "a param twice": lambda p, s: p.__setitem__(1, p[0]),
    "a param and a view of it": lambda p, s: p.__setitem__(1, p[0][:]),
    "a param that is a slot": lambda p, s: p.__setitem__(0, s.slots["exp_avg_sq"][0]),
    "a slot twice": lambda p, s: s.slots["exp_avg"].__setitem__(1, s.slots["exp_avg"][0]),
    "one slot tree as two": lambda p, s: s.slots.__setitem__("exp_avg", s.slots["exp_avg_sq"]),
}


@pytest.mark.parametrize("mode", ["auto", "blocked", "off"])
@pytest.mark.parametrize("sharing", list(NEW_SHARING))
def test_sharing_made_after_warm_steps_gets_the_first_steps_error(sharing, mode):
    """A plan's shared-memory checks hold only while the arrays it checked are where they were:
    arrays made to share memory after two steps get the error a first step gets, nothing written."""
    with portopt.fast_path(mode):
        cold = portopt.Adam(lr=0.1)
        params, grads, state = _list_setup(cold, 0)
        NEW_SHARING[sharing](params, state)
        with pytest.raises(ValueError, match="share memory") as first:
            cold.step(params, grads, state)
        warm = portopt.Adam(lr=0.1)
        params, grads, state = _list_setup(warm, 2)
        NEW_SHARING[sharing](params, state)
        before = [x.copy() for x in params], {k: [x.copy() for x in v] for k, v in state.slots.items()}
        with pytest.raises(ValueError, match="share memory") as raised:
            warm.step(params, grads, state)
        assert str(raised.value) == str(first.value) and state.step == 2
        assert all(a.tobytes() == b.tobytes() for a, b in zip(before[0], params))


def test_memory_moved_under_the_same_array_is_planned_again():
    """``resize(refcheck=False)`` moves an array's elements and keeps the object and its
    signature: the step after it writes the array's new memory (update's bits), not the old."""
    rule = portopt.Adam(lr=0.1)
    rng = np.random.default_rng(1)
    p, g = rng.standard_normal(1000), rng.standard_normal(1000)
    state = rule.init(p)
    for _ in range(2):
        rule.step(p, g, state)
    expected, _ = rule.update(p.copy(), g, portopt.State(rule="Adam", step=state.step,
                                                          slots={k: v.copy() for k, v in state.slots.items()}))
    address = p.ctypes.data
    p.resize(200 * 1000, refcheck=False)
    p.resize(1000, refcheck=False)
    if p.ctypes.data == address:
        pytest.skip("the allocator gave the same address back")
    bystander = np.full(1000, 7.0)  # may land where p was
    rule.step(p, g, state)
    assert p.tobytes() == expected.tobytes() and np.all(bystander == 7.0) and state.step == 3


def test_fresh_views_of_the_same_memory_each_step_keep_the_plan_and_the_bits(monkeypatch):
    """A loop that passes a new view of the same buffers at every step (``buffer[:]``): the
    plan is kept (the written arrays lie where they lay), and the bits are update's."""
    rule = portopt.Adam(lr=0.1)
    rng = np.random.default_rng(3)
    buffer, grads = rng.standard_normal(50), rng.standard_normal((6, 50))
    pure, pure_state = buffer.copy(), rule.init(buffer)
    state = rule.init(buffer)
    planned = []
    real_init = portopt.plan.Plan.__init__
    monkeypatch.setattr(portopt.plan.Plan, "__init__",
                        lambda self, *args: (planned.append(args[-1]), real_init(self, *args))[1])
    for g in grads:
        pure, pure_state = rule.update(pure, g, pure_state)
        rule.step(buffer[:], g, state)
    assert buffer.tobytes() == pure.tobytes() and state.step == 6
    assert planned.count(True) == 1, "a view of the same memory planned again"


@pytest.mark.skipif("torch-cpu" not in TARGETS, reason="torch is not installed")
def test_a_tensor_set_to_share_memory_after_warm_steps_is_refused():
    """torch's ``set_`` keeps the tensor object and moves its elements: in the drop-in too."""
    import portopt.torch as pt
    import torch

    a, b = torch.nn.Parameter(torch.randn(8, dtype=torch.float64)), torch.nn.Parameter(torch.randn(8, dtype=torch.float64))
    optimizer = pt.Adam([a, b], lr=0.1)
    for _ in range(2):
        a.grad, b.grad = torch.ones(8, dtype=torch.float64), torch.ones(8, dtype=torch.float64)
        optimizer.step()
    with torch.no_grad():
        b.set_(a.detach())
    with pytest.raises(ValueError, match="share memory"):
        optimizer.step()


@pytest.mark.parametrize("mode", ["off", "auto"])
@pytest.mark.parametrize("variant", _variants_on_numpy())
def test_update_returns_params_and_slots_that_share_no_memory(variant, mode):
    """What update returns can be stepped in place next: no two of its arrays share memory
    (ASGD's reference kernel returns its new p as ax at first: a copy comes back)."""
    from helpers import make_rule, random_arrays

    rule = make_rule(variant)
    params = random_arrays(5, (6,), "float64", 1)[0]
    state = rule.init(params)
    with portopt.fast_path(mode):
        for g in random_arrays(6, (6,), "float64", 3):
            params, state = rule.update(params, g, state)
            arrays = [params, *state.slots.values()]
            assert not any(np.shares_memory(a, b) for i, a in enumerate(arrays) for b in arrays[i + 1:])
            rule.step(params, g, state)  # and an in-place step takes them


# --- the repeated step on torch tensors ----------------------------------------------------------
def _variants_on_torch():
    from helpers import VARIANTS, variant_id

    return [pytest.param(v, id=variant_id(v)) for v in VARIANTS]


@pytest.mark.skipif("torch-cpu" not in TARGETS, reason="torch is not installed")
@pytest.mark.parametrize("variant", _variants_on_torch())
def test_steps_on_the_same_tensors_give_the_bits_of_update(variant):
    """The repeated step on torch tensors: the same params and state each step, the gradients
    refilled in place, replaced, moved under the same object (``set_``) and, once, made to be
    a param's own memory; every variant gives update's bits, and the moved param is written
    where it now lies."""
    import torch
    from helpers import make_rule, random_arrays, same_bits

    rule = make_rule(variant)
    values = [torch.from_numpy(v) for v in random_arrays(3, (7,), "float32", 10)]
    params = {"w": torch.from_numpy(random_arrays(4, (7,), "float32", 1)[0]), "b": torch.ones(3)}
    grads = {"w": torch.empty(7), "b": torch.empty(3)}
    pure, pure_state = {k: v.clone() for k, v in params.items()}, rule.init(params)
    state = rule.init(params)
    for k, g in enumerate(values):
        if k == 3:
            grads["w"].set_(torch.empty(7))  # the same object, new memory
        if k == 5:
            grads["b"] = torch.empty(3)  # a new object
        if k == 7:
            params["w"].set_(params["w"].clone())  # a written tensor moved: planned again
        grads["w"].copy_(g)
        grads["b"].copy_(g[:3])
        step_grads = grads
        if k == 6:  # a gradient that is a param's own memory, under the same object as before
            kept = grads["b"]
            grads["b"] = torch.empty(0).set_(params["b"])
        pure, pure_state = rule.update(pure, {k2: v.clone() for k2, v in step_grads.items()}, pure_state)
        rule.step(params, step_grads, state)
        if k == 6:
            grads["b"] = kept
    assert state.step == pure_state.step == len(values)
    for key in params:
        assert same_bits(params[key].numpy(), pure[key].numpy()), key
        for name in state.slots:
            assert same_bits(state.slots[name][key].numpy(), pure_state.slots[name][key].numpy()), (name, key)


@pytest.mark.skipif("torch-cpu" not in TARGETS, reason="torch is not installed")
def test_a_gradient_moved_under_the_same_tensor_is_read_where_it_now_lies():
    """The repeated step does not keep a torch gradient's address: after ``set_`` it reads the
    gradient's new elements (not the memory it left, which may hold anything)."""
    import torch

    rule = portopt.SGD(lr=1.0)
    p, g = torch.zeros(64, dtype=torch.float64), torch.ones(64, dtype=torch.float64)
    state = rule.init(p)
    for _ in range(2):
        rule.step(p, g, state)
    g.set_(torch.full((64,), 3.0, dtype=torch.float64))
    rule.step(p, g, state)
    assert torch.equal(p, torch.full((64,), -5.0, dtype=torch.float64))


# a first-step flag, host state from the gradients, a schedule, a max slot, a dtype to convert
LANE_RULES = {
    "SGD momentum": lambda: portopt.SGD(lr=0.1, momentum=0.9),
    "AdaGradNorm": lambda: portopt.AdaGradNorm(lr=0.5),
    "Adam lr schedule": lambda: portopt.Adam(lr=lambda step: 0.1 / (1 + step)),
    "AMSGrad": lambda: portopt.AMSGrad(lr=0.1),
    "AdamW float32": lambda: portopt.AdamW(lr=0.1, weight_decay=0.1),
    # chains: the lane runs their transforms too (a global norm; an elementwise clip)
    "Clipped Adam": lambda: portopt.Clipped(portopt.Adam(lr=0.1), 0.5),
    "ClipByValue SGD momentum float32": lambda: portopt.chain(portopt.ClipByValue(0.3),
                                                              portopt.SGD(lr=0.1, momentum=0.9)),
}


def _lane_inputs(dtype, step):
    rng = np.random.default_rng(step)
    params = {"w": rng.standard_normal((3, 4)).astype(dtype), "b": rng.standard_normal(5).astype(dtype),
              "s": np.asarray(rng.standard_normal(), dtype)}
    grads = [{k: rng.standard_normal(np.shape(v)).astype(dtype) for k, v in params.items()} for _ in range(6)]
    return params, grads


def _updates(rule, params, grads):
    state = rule.init(params)
    for g in grads:
        params, state = rule.update(params, g, state)
    return params, state


def _lane_case(name, backend, seed, lane, monkeypatch):
    """A LANE_RULES case: (target, dtype, host params, host grads, the reference's updates,
    and a list that records, per call of the lane ``lane`` of portopt.optimizer, whether it ran)."""
    from portopt import optimizer
    from portopt.kernels import cpu as compiled

    if not compiled.available():
        pytest.skip("the lane is for compiled steps; numba is not installed")
    dtype = np.float32 if "float32" in name else np.float64
    params, grads = _lane_inputs(dtype, seed)
    with portopt.fast_path("off"):
        expected = _updates(LANE_RULES[name](), params, grads)
    taken = []
    original = getattr(optimizer, lane)

    def counted(*args, **kwargs):
        result = original(*args, **kwargs)
        taken.append(result[0] is not None)
        return result

    monkeypatch.setattr(optimizer, lane, counted)
    return TARGETS[backend], dtype, params, grads, expected, taken


@pytest.mark.parametrize("backend", [b for b in ("numpy", "torch-cpu") if b in TARGETS])
@pytest.mark.parametrize("name", list(LANE_RULES))
def test_the_update_lane_gives_the_full_updates_bits(name, backend, monkeypatch):
    """A repeated update takes the lane (one compiled call after the signatures), with the bits
    of the reference, and hands back new arrays only."""
    target, dtype, params, grads, expected, taken = _lane_case(name, backend, 0, "repeat_update", monkeypatch)
    inputs = {k: target.asarray(v) for k, v in params.items()}
    got = _updates(LANE_RULES[name](), inputs, [{k: target.asarray(v) for k, v in g.items()} for g in grads])
    assert taken == [True] * (len(grads) - 1)  # every update after the first
    assert got[1].step == expected[1].step == len(grads) and got[1].host.keys() == expected[1].host.keys()
    host = target.to_numpy
    for k in params:
        assert host(got[0][k]).tobytes() == expected[0][k].tobytes() and host(got[0][k]).dtype == dtype, k
        for slot in expected[1].slots:
            assert host(got[1].slots[slot][k]).tobytes() == expected[1].slots[slot][k].tobytes(), (slot, k)
    assert all(got[1].host[h] == expected[1].host[h] for h in expected[1].host)
    assert all(host(inputs[k]).tobytes() == params[k].tobytes() for k in params)  # nothing of the caller's written
    arrays = [*got[0].values(), *(x for tree in got[1].slots.values() for x in tree.values())]
    starts = [x.data_ptr() if hasattr(x, "data_ptr") else x.ctypes.data for x in arrays if np.size(host(x))]
    assert len(set(starts)) == len(starts)  # every output an array of its own


@pytest.mark.parametrize("backend", [b for b in ("numpy", "torch-cpu") if b in TARGETS])
@pytest.mark.parametrize("name", list(LANE_RULES))
def test_the_step_lane_gives_the_full_steps_bits(name, backend, monkeypatch):
    """Repeated in-place steps on the same arrays with new gradients take the lane (a chain's
    transforms included) from the second step on, with the reference's bits."""
    target, dtype, params, grads, expected, taken = _lane_case(name, backend, 1, "prepare_repeat", monkeypatch)
    rule = LANE_RULES[name]()
    inputs = {k: target.asarray(v) for k, v in params.items()}
    state = rule.init(inputs)
    for g in grads:
        rule.step(inputs, {k: target.asarray(v) for k, v in g.items()}, state)
    assert taken == [True] * (len(grads) - 1)  # every step after the first
    assert state.step == expected[1].step and all(state.host[h] == expected[1].host[h] for h in expected[1].host)
    for k in params:
        assert target.to_numpy(inputs[k]).tobytes() == expected[0][k].tobytes(), k
        for slot in expected[1].slots:
            assert target.to_numpy(state.slots[slot][k]).tobytes() == expected[1].slots[slot][k].tobytes(), (slot, k)


def test_a_schedule_runs_once_per_update_when_the_lane_is_missed():
    calls = []

    def lr(step):
        calls.append(step)
        return 0.1

    rule = portopt.Adam(lr=lr)
    params, grads = _lane_inputs(np.float64, 1)
    params, state = rule.update(params, grads[0], rule.init(params))
    params, state = rule.update(params, grads[1], state)  # the lane
    wider = {**params, "b": np.zeros(7)}  # the lane misses; the full update takes its evaluated scalars
    state = portopt.State(rule=state.rule, step=state.step, host=state.host,
                          slots={k: {**v, "b": np.zeros(7)} for k, v in state.slots.items()})
    rule.update(wider, {**grads[2], "b": np.ones(7)}, state)
    assert calls == [0, 1, 2]


def test_skip_nonfinite_updates_skip_after_finite_ones():
    rule = portopt.Adam(lr=0.1, skip_nonfinite=True)
    params, grads = _lane_inputs(np.float64, 2)
    params, state = rule.update(params, grads[0], rule.init(params))
    params, state = rule.update(params, grads[1], state)
    bad = {**grads[2], "b": np.full(5, np.nan)}
    new_params, new_state = rule.update(params, bad, state)
    assert new_state.skipped == 1 and new_state.step == state.step
    assert all(new_params[k].tobytes() == params[k].tobytes() and new_params[k] is not params[k] for k in params)
