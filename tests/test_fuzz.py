"""Property-based tests over rules, hyperparameters (edges included), dtypes, shapes and values.

CI runs the "ci" profile (25 examples each); `HYPOTHESIS_PROFILE=long pytest tests/test_fuzz.py`
runs 2000.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import portopt
from conftest import bitwise_targets
from helpers import advance

# Edge values include beta1 >= sqrt(beta2), which is allowed and warns (tested elsewhere).
pytestmark = pytest.mark.filterwarnings("ignore::portopt.DivergenceWarning")

unit = st.one_of(st.just(0.0), st.floats(0.0, 0.999), st.just(0.999))
nonnegative = st.one_of(st.just(0.0), st.floats(0.0, 10.0), st.just(1e-8))
flag = st.booleans()

RULE_OPTIONS = {
    "Adam": lambda: st.fixed_dictionaries({"lr": nonnegative, "betas": st.tuples(unit, unit), "eps": nonnegative,
                                           "weight_decay": nonnegative, "amsgrad": flag, "maximize": flag}),
    "AdamW": lambda: st.fixed_dictionaries({"lr": nonnegative, "betas": st.tuples(unit, unit), "eps": nonnegative,
                                            "weight_decay": nonnegative, "amsgrad": flag, "maximize": flag}),
    "AMSGrad": lambda: st.fixed_dictionaries({"lr": nonnegative, "betas": st.tuples(unit, unit), "eps": nonnegative,
                                              "weight_decay": nonnegative, "maximize": flag}),
    "AdaGrad": lambda: st.fixed_dictionaries({"lr": nonnegative, "lr_decay": nonnegative, "eps": nonnegative,
                                              "weight_decay": nonnegative, "initial_accumulator_value": nonnegative,
                                              "maximize": flag}),
    "RMSProp": lambda: st.fixed_dictionaries({"lr": nonnegative, "alpha": unit, "eps": nonnegative,
                                              "weight_decay": nonnegative, "momentum": nonnegative,
                                              "centered": flag, "maximize": flag}),
}

rules = st.sampled_from(sorted(RULE_OPTIONS)).flatmap(
    lambda name: RULE_OPTIONS[name]().map(lambda options: portopt.RULES[name](**options)))


@st.composite
def problems(draw, dtypes=("float16", "float32", "float64")):
    """A rule, and params with a few steps of gradients, special values included."""
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=2, min_side=0, max_side=5))
    width = {"float16": 16, "float32": 32, "float64": 64}[dtype]
    values = st.floats(width=width, allow_nan=True, allow_infinity=True)
    finite = st.floats(width=width, min_value=-100, max_value=100)
    params = draw(hnp.arrays(dtype, shape, elements=finite))
    grads = [draw(hnp.arrays(dtype, shape, elements=values)) for _ in range(draw(st.integers(1, 4)))]
    return draw(rules), params, grads


def _bits(a):
    """Bit patterns with NaN canonicalised (NaN payloads are outside the contract)."""
    a = np.ascontiguousarray(a)
    return np.where(np.isnan(a), np.array(np.nan, a.dtype), a).tobytes()


@given(problems())
def test_update_never_mutates_and_step_equals_update(problem):
    rule, p0, grads = problem
    params, state = p0.copy(), rule.init(p0.copy())
    in_place, in_place_state = p0.copy(), rule.init(p0.copy())
    with np.errstate(all="ignore"):
        for g in grads:
            old_params, old_slots = params, {k: v.copy() for k, v in state.slots.items()}
            g_copy, p_copy = g.copy(), params.copy()
            old_state = state
            params, state = rule.update(params, g, state)
            assert _bits(g) == _bits(g_copy) and _bits(old_params) == _bits(p_copy)
            assert all(_bits(old_state.slots[k]) == _bits(v) for k, v in old_slots.items())
            rule.step(in_place, g, in_place_state)
            assert _bits(in_place) == _bits(params)
    for name in rule.slot_names():
        assert _bits(in_place_state.slots[name]) == _bits(state.slots[name])


@given(problems(dtypes=("float32", "float64")))
def test_backends_agree_bitwise(problem):
    rule, p0, grads = problem
    results = {}
    with np.errstate(all="ignore"):
        for name, target in bitwise_targets(str(p0.dtype)).items():
            params = target.asarray(p0)
            state = rule.init(params)
            for g in grads:
                params, state = advance(rule, target, params, target.asarray(g), state)
            results[name] = (_bits(target.to_numpy(params)),
                             [_bits(target.to_numpy(state.slots[s])) for s in rule.slot_names()])
    reference = results.pop("numpy")
    for name, result in results.items():
        assert result == reference, f"{name} differs from numpy for {rule!r}"


@given(problems(dtypes=("float16",)))
def test_float16_numpy_and_torch_agree(problem):
    torch = pytest.importorskip("torch", reason="torch is not installed")
    rule, p0, grads = problem
    a, b = p0.copy(), torch.from_numpy(p0.copy())
    sa, sb = rule.init(a), rule.init(b)
    with np.errstate(all="ignore"):
        for g in grads:
            rule.step(a, g, sa)
            rule.step(b, torch.from_numpy(g.copy()), sb)
    assert _bits(a) == _bits(b.numpy())


INVALID = st.one_of(
    st.tuples(st.just("lr"), st.one_of(st.floats(max_value=-1e-300), st.just(float("nan")), st.just(float("inf")))),
    st.tuples(st.just("eps"), st.floats(max_value=-1e-300)),
    st.tuples(st.just("weight_decay"), st.floats(max_value=-1e-300)),
    st.tuples(st.just("lr"), st.sampled_from(["0.1", None, [0.1], True])),
)


@given(st.sampled_from(sorted(portopt.RULES)), INVALID)
def test_invalid_hyperparameters_raise_a_named_error(rule_name, invalid):
    name, value = invalid
    assume(name in inspect.signature(portopt.RULES[rule_name]).parameters)
    with pytest.raises((ValueError, TypeError), match=rf"^{name}"):
        portopt.RULES[rule_name](**{name: value})


@given(st.floats(allow_nan=True).filter(lambda b: not 0 <= b < 1), st.sampled_from(["Adam", "AdamW", "AMSGrad"]))
def test_betas_outside_the_unit_interval_raise(beta, rule_name):
    with pytest.raises(ValueError, match=r"^betas\[1\]"):
        portopt.RULES[rule_name](betas=(0.9, beta))
