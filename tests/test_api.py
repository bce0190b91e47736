"""The functional (update) and in-place (step) APIs: purity, equality, views, dtypes, trees."""

from __future__ import annotations

import numpy as np
import pytest

import portopt
from helpers import VARIANTS, make_rule, random_arrays, same_bits, variant_id


def _tree(target, seed, dtype="float32"):
    a, b, c = random_arrays(seed, (4, 3), dtype, 1)[0], random_arrays(seed + 1, (5,), dtype, 1)[0], \
        random_arrays(seed + 2, (), dtype, 1)[0]
    return {"w": target.asarray(a), "rest": [target.asarray(b), (target.asarray(c),)]}


def _host(target, tree):
    return [target.to_numpy(x) for x in portopt.flatten(tree)[0]]


@pytest.mark.parametrize("variant", VARIANTS, ids=[variant_id(v) for v in VARIANTS])
def test_update_and_step_are_bit_identical_and_update_is_pure(variant, target):
    rule = make_rule(variant)
    params, state = _tree(target, 10), None
    state = rule.init(params)
    in_place = _tree(target, 10)
    in_place_state = rule.init(in_place)
    for step in range(5):
        grads = _tree(target, 100 + step)
        before = (_host(target, params), _host(target, grads), {k: _host(target, v) for k, v in state.slots.items()})
        new_params, new_state = rule.update(params, grads, state)
        after = (_host(target, params), _host(target, grads), {k: _host(target, v) for k, v in state.slots.items()})
        assert all(same_bits(x, y) for x, y in zip(before[0] + before[1], after[0] + after[1])), "update mutated an input"
        assert all(same_bits(x, y) for k in before[2] for x, y in zip(before[2][k], after[2][k]))
        assert state.step == step and new_state.step == step + 1
        if target.mutable:
            rule.step(in_place, grads, in_place_state)
            assert all(same_bits(x, y) for x, y in zip(_host(target, in_place), _host(target, new_params)))
            for slot in rule.slot_names():
                assert all(same_bits(x, y) for x, y in zip(_host(target, in_place_state.slots[slot]),
                                                             _host(target, new_state.slots[slot])))
        params, state = new_params, new_state
    assert not same_bits(_host(target, params)[0], _host(target, _tree(target, 10))[0])


def test_amsgrad_is_adam_with_amsgrad(numpy_target):
    p0 = random_arrays(4, (50,), "float32", 1)[0]
    grads = random_arrays(5, (50,), "float32", 100)
    results = []
    for rule in (portopt.AMSGrad(lr=0.01), portopt.Adam(lr=0.01, amsgrad=True)):
        params = p0.copy()
        state = rule.init(params)
        for g in grads:
            rule.step(params, g, state)
        results.append((params, state.slots["max_exp_avg_sq"]))
    assert same_bits(results[0][0], results[1][0]) and same_bits(results[0][1], results[1][1])


def test_step_writes_into_strided_numpy_views():
    base = np.arange(30, dtype=np.float64).reshape(5, 6) / 7
    untouched = base.copy()
    view = base[::2, 1::2]  # non-contiguous
    rule = portopt.Adam(lr=0.1)
    expected, _ = rule.update(view.copy(), np.ones_like(view), rule.init(view.copy()))
    rule.step(view, np.ones_like(view), rule.init(view))
    assert same_bits(base[::2, 1::2], expected)
    mask = np.ones_like(base, dtype=bool)
    mask[::2, 1::2] = False
    assert same_bits(base[mask], untouched[mask]), "elements outside the view changed"


def test_step_writes_into_non_contiguous_torch_views_and_leaf_parameters():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    weight = torch.nn.Parameter(torch.arange(12, dtype=torch.float32).reshape(3, 4) / 5)
    view = weight.detach().t()  # non-contiguous, shares memory with the leaf
    grads = torch.ones(4, 3)
    rule = portopt.RMSProp(lr=0.1)
    expected, _ = rule.update(view.clone(), grads, rule.init(view.clone()))
    rule.step(view, grads, rule.init(view))
    assert torch.equal(weight.detach().t(), expected)
    # A leaf that requires grad is written in place too (through torch.no_grad).
    leaf = torch.nn.Parameter(torch.ones(3))
    state = rule.init(leaf)
    rule.step(leaf, torch.ones(3), state)
    assert leaf.requires_grad and not torch.equal(leaf.detach(), torch.ones(3))


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_computes_in_float32_with_float32_state(dtype):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    half = getattr(torch, dtype)
    params = torch.linspace(-1, 1, 9).to(half)
    rule = portopt.Adam(lr=0.01)
    state = rule.init(params)
    assert state.slots["exp_avg"].dtype == torch.float32
    grads = torch.linspace(-3, 2, 9).to(half)
    # The step is the float32 step on the widened values, rounded once to the param dtype.
    expected, _ = rule.update(params.float(), grads.float(), rule.init(params.float()))
    rule.step(params, grads, state)
    assert params.dtype == half and torch.equal(params, expected.to(half))
    # A zero gradient stays finite: the default eps (0 in float16) is applied in float32.
    rule.step(params, torch.zeros(9, dtype=half), state)
    assert torch.isfinite(params).all()


def test_float16_numpy_matches_torch_and_state_is_float32():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    p0 = random_arrays(6, (40,), "float16", 1)[0]
    grads = random_arrays(7, (40,), "float16", 50)
    rule = portopt.AdamW(lr=0.01)
    a, b = p0.copy(), torch.from_numpy(p0.copy())
    sa, sb = rule.init(a), rule.init(b)
    assert sa.slots["exp_avg"].dtype == np.float32
    for g in grads:
        rule.step(a, g, sa)
        rule.step(b, torch.from_numpy(g.copy()), sb)
    assert same_bits(a, b.numpy())


def test_schedule_sees_steps_taken_and_changes_the_result(numpy_target):
    seen = []

    def lr(steps_taken):
        seen.append(steps_taken)
        return 0.1 / (1 + steps_taken)

    rule = portopt.Adam(lr=lr)
    params = np.ones(3)
    state = rule.init(params)
    for _ in range(3):
        rule.step(params, np.ones(3), state)
    assert seen == [0, 1, 2]
    constant = portopt.Adam(lr=0.1)
    other = np.ones(3)
    other_state = constant.init(other)
    for _ in range(3):
        constant.step(other, np.ones(3), other_state)
    assert not same_bits(params, other)


def test_empty_tree_and_empty_arrays():
    rule = portopt.Adam()
    state = rule.init({})
    new_params, new_state = rule.update({}, {}, state)
    assert new_params == {} and new_state.step == 1
    empty = np.zeros((0, 3), np.float32)
    state = rule.init(empty)
    rule.step(empty, np.zeros((0, 3), np.float32), state)
    assert state.step == 1 and state.slots["exp_avg"].shape == (0, 3)


def test_update_on_read_only_arrays_and_step_refuses_them():
    params = np.ones(4)
    params.setflags(write=False)
    rule = portopt.Adam()
    state = rule.init(params)
    new_params, _ = rule.update(params, np.ones(4), state)
    assert not same_bits(new_params, params)
    with pytest.raises(TypeError, match=r"params is read-only.*update\(\)"):
        rule.step(params, np.ones(4), state)


def test_jax_arrays_work_through_update():
    jnp = pytest.importorskip("jax.numpy", reason="jax is not installed")
    params = jnp.ones(5, dtype=jnp.float32)
    rule = portopt.Adam(lr=0.1)
    new_params, state = rule.update(params, jnp.ones(5, dtype=jnp.float32), rule.init(params))
    expected, _ = rule.update(np.ones(5, np.float32), np.ones(5, np.float32), rule.init(np.ones(5, np.float32)))
    assert same_bits(np.asarray(new_params), expected)
