"""Bad input: a clear error naming the argument, and nothing written."""

from __future__ import annotations

import numpy as np
import pytest

import portopt
from helpers import same_bits

CONSTRUCTOR_ERRORS = [
    (portopt.Adam, {"lr": -1e-3}, ValueError, r"lr must be >= 0"),
    (portopt.Adam, {"lr": float("nan")}, ValueError, r"lr must be finite"),
    (portopt.Adam, {"lr": "0.1"}, TypeError, r"lr must be a number or a callable schedule"),
    (portopt.Adam, {"eps": -1.0}, ValueError, r"eps must be >= 0"),
    (portopt.Adam, {"weight_decay": -0.1}, ValueError, r"weight_decay must be >= 0"),
    (portopt.Adam, {"betas": (1.0, 0.999)}, ValueError, r"betas\[0\] must be in \[0.0, 1.0\)"),
    (portopt.Adam, {"betas": (0.9, -0.1)}, ValueError, r"betas\[1\] must be >= 0"),
    (portopt.Adam, {"betas": 0.9}, TypeError, r"betas must be a pair"),
    (portopt.Adam, {"amsgrad": 1}, TypeError, r"amsgrad must be a bool"),
    (portopt.AdamW, {"weight_decay": -1e-2}, ValueError, r"weight_decay must be >= 0"),
    (portopt.AMSGrad, {"betas": (0.9, 1.5)}, ValueError, r"betas\[1\] must be in"),
    (portopt.AdaGrad, {"lr_decay": -1.0}, ValueError, r"lr_decay must be >= 0"),
    (portopt.AdaGrad, {"initial_accumulator_value": -1.0}, ValueError, r"initial_accumulator_value must be >= 0"),
    (portopt.AdaGrad, {"eps": True}, TypeError, r"eps must be a number or a callable schedule, got bool"),
    (portopt.RMSProp, {"alpha": 1.0}, ValueError, r"alpha must be in \[0.0, 1.0\)"),
    (portopt.RMSProp, {"momentum": -0.5}, ValueError, r"momentum must be >= 0"),
    (portopt.RMSProp, {"centered": "yes"}, TypeError, r"centered must be a bool"),
]


@pytest.mark.parametrize("rule, kwargs, error, pattern", CONSTRUCTOR_ERRORS,
                         ids=[f"{r.__name__}-{next(iter(k))}" for r, k, _, _ in CONSTRUCTOR_ERRORS])
def test_constructor_rejects(rule, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        rule(**kwargs)


def _tree(value=1.0):
    return {"a": np.full(3, value), "b": [np.full((2, 2), value), np.full(4, value)]}


def _step_errors():
    return [
        ("grads tree", lambda p, s: ({"a": p["a"], "b": [p["b"][0]]}, s), ValueError,
         r"grads has tree structure .* but params has"),
        ("grads shape", lambda p, s: ({"a": p["a"], "b": [p["b"][0], np.ones(5)]}, s), ValueError,
         r"grads\['b'\]\[1\] has shape \(5,\), params\['b'\]\[1\] has shape \(4,\)"),
        ("grads dtype", lambda p, s: ({"a": p["a"], "b": [p["b"][0], np.ones(4, np.float32)]}, s), TypeError,
         r"grads\['b'\]\[1\] has dtype float32, expected float64"),
        ("grads not array", lambda p, s: ({"a": p["a"], "b": [p["b"][0], [1.0, 2.0, 3.0, 4.0]]}, s), ValueError,
         r"grads has tree structure"),
        ("state other rule", lambda p, s: (p, portopt.AdaGrad().init(p)), ValueError,
         r"state was made by AdaGrad, not Adam"),
        ("state other options", lambda p, s: (p, portopt.Adam(amsgrad=True).init(p)), ValueError,
         r"state has slots .*max_exp_avg_sq.* but this Adam needs"),
        ("state other tree", lambda p, s: (p, portopt.Adam().init({"a": p["a"]})), ValueError,
         r"state.slots\['exp_avg'\] has tree structure"),
        ("state slot shape", lambda p, s: (p, portopt.State("Adam", 0, {
            "exp_avg": {"a": np.zeros(3), "b": [np.zeros((2, 2)), np.zeros(3)]},
            "exp_avg_sq": s.slots["exp_avg_sq"]})), ValueError,
         r"state.slots\['exp_avg'\]\['b'\]\[1\] has shape \(3,\)"),
        ("state not a State", lambda p, s: (p, {"step": 0}), TypeError, r"state must be a portopt State"),
    ]


@pytest.mark.parametrize("name, make, error, pattern", _step_errors(), ids=[c[0] for c in _step_errors()])
def test_step_and_update_reject_and_write_nothing(name, make, error, pattern):
    rule = portopt.Adam(lr=0.1)
    params = _tree()
    state = rule.init(params)
    rule.step(params, _tree(0.5), state)  # a state with non-trivial values
    grads, bad_state = make(_tree(0.25), state)
    snapshot = [x.copy() for x in portopt.flatten(params)[0]]
    slots_snapshot = {k: [x.copy() for x in portopt.flatten(v)[0]] for k, v in state.slots.items()}
    with pytest.raises(error, match=pattern):
        rule.update(params, grads, bad_state)
    with pytest.raises(error, match=pattern):
        rule.step(params, grads, bad_state)
    assert all(same_bits(a, b) for a, b in zip(portopt.flatten(params)[0], snapshot))
    for k, v in state.slots.items():
        assert all(same_bits(a, b) for a, b in zip(portopt.flatten(v)[0], slots_snapshot[k]))
    assert state.step == 1


@pytest.mark.parametrize("dtype, pattern", [
    (np.int64, r"params\['x'\] has dtype int64; params must be real floating arrays"),
    (np.bool_, r"params\['x'\] has dtype bool; params must be real floating arrays"),
    (np.complex64, r"params\['x'\] is complex .*real floating params only"),
])
def test_non_float_params_are_refused(dtype, pattern):
    with pytest.raises(TypeError, match=pattern):
        portopt.Adam().init({"x": np.zeros(3, dtype=dtype)})


def test_params_from_two_backends_are_refused():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    with pytest.raises(TypeError, match=r"params\[1\] is a .*torch.* array but params\[0\] is a .*numpy"):
        portopt.Adam().init([np.zeros(3), torch.zeros(3)])


def test_grads_from_another_backend_are_refused():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    params = np.zeros(3)
    rule = portopt.Adam()
    with pytest.raises(TypeError, match=r"grads is a .*torch.* array but params is a .*numpy"):
        rule.step(params, torch.zeros(3, dtype=torch.float64), rule.init(params))


@pytest.mark.parametrize("schedule, error, pattern", [
    (lambda t: -0.1, ValueError, r"lr \(schedule value at step 1\) must be >= 0"),
    (lambda t: "fast", TypeError, r"lr schedule returned str at step 1"),
    (lambda t: 1 / 0, ZeroDivisionError, r"division by zero"),
])
def test_schedule_failure_leaves_everything_unchanged(schedule, error, pattern):
    calls = []

    def lr(t):
        calls.append(t)
        return 0.1 if t == 0 else schedule(t)

    rule = portopt.Adam(lr=lr)
    params = _tree()
    state = rule.init(params)
    rule.step(params, _tree(0.5), state)
    snapshot = [x.copy() for x in portopt.flatten(params)[0]]
    with pytest.raises(error, match=pattern):
        rule.step(params, _tree(0.5), state)
    assert state.step == 1 and calls == [0, 1]
    assert all(same_bits(a, b) for a, b in zip(portopt.flatten(params)[0], snapshot))


def test_bad_last_leaf_leaves_earlier_leaves_unwritten():
    rule = portopt.RMSProp(momentum=0.9)
    params = [np.ones(3), np.ones(3), np.ones(3)]
    state = rule.init(params)
    grads = [np.ones(3), np.ones(3), np.ones(2)]  # only the last leaf is wrong
    with pytest.raises(ValueError, match=r"grads\[2\] has shape \(2,\)"):
        rule.step(params, grads, state)
    assert all(same_bits(p, np.ones(3)) for p in params)
    assert all(same_bits(b, np.zeros(3)) for b in state.slots["momentum_buffer"])


def _generic_constructor_errors():
    """From the registry: every argument of every rule, with a value of the wrong type and (for
    numbers) one out of range; each must be refused naming the argument."""
    import inspect

    cases = []
    for _name, rule in sorted(portopt.RULES.items()):
        for argument, parameter in inspect.signature(rule).parameters.items():
            default = parameter.default
            if isinstance(default, bool):
                cases.append((rule, {argument: 1}, TypeError, rf"{argument} must be a bool"))
            elif isinstance(default, float):
                cases.append((rule, {argument: -1.0}, ValueError, rf"{argument}.* must be (>=|in|> )"))
                cases.append((rule, {argument: float("nan")}, ValueError, rf"{argument}.* must be finite"))
                cases.append((rule, {argument: "0.1"}, TypeError, rf"{argument}.* must be"))
            elif isinstance(default, tuple):
                cases.append((rule, {argument: 0.5}, TypeError, rf"{argument} must be a pair"))
    return cases


GENERIC = _generic_constructor_errors()


@pytest.mark.parametrize("rule, kwargs, error, pattern", GENERIC,
                         ids=[f"{r.__name__}-{next(iter(k))}-{e.__name__}" for r, k, e, _ in GENERIC])
def test_every_rule_refuses_bad_arguments_naming_them(rule, kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        rule(**kwargs)


def test_every_rule_is_covered_by_the_generic_errors():
    assert {r.__name__ for r, _, _, _ in GENERIC} == {r.__name__ for r in portopt.RULES.values()}
