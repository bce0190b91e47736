"""``state_dtype``: the state kept in another dtype (e.g. bfloat16 next to bfloat16 params, the
bytes torch's fused step moves) still gives one set of bits on every path and backend.

The meaning is checked against an independent formulation: the rule with state in the compute
dtype, its state rounded to ``state_dtype`` after every step, gives the same bits.
"""

from __future__ import annotations

import numpy as np
import pytest

import portopt
from conftest import TARGETS
from helpers import VARIANTS, make_rule, variant_id

ml_dtypes = pytest.importorskip("ml_dtypes")

STEPS = 8
# (backend, params dtype, state dtype)
COMBINATIONS = [("numpy", "float16", "float16"), ("numpy", "float32", "bfloat16"), ("numpy", "float64", "float32"),
                ("torch-cpu", "bfloat16", "bfloat16"), ("torch-cpu", "float16", "bfloat16")]


def _first_variants():
    seen, params = set(), []
    for variant in VARIANTS:
        first = variant["rule"] not in seen
        seen.add(variant["rule"])
        params.append(pytest.param(variant, id=variant_id(variant), marks=() if first else pytest.mark.long))
    return params


def _with_state_dtype(variant, state_dtype):
    """The variant's rule (clipped or accumulated as it says) with its state kept in ``state_dtype``."""
    return make_rule({**variant, "options": {**variant["options"], "state_dtype": state_dtype}})


class _Backend:
    """Arrays of a backend from float64 NumPy values, and back as float64 (exact for every dtype here)."""

    def __init__(self, name):
        self.name = name
        if name == "torch-cpu":
            import torch

            self.torch = torch

    def array(self, values, dtype):
        if self.name == "numpy":
            return np.asarray(values).astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype)
        return self.torch.from_numpy(np.asarray(values)).to(getattr(self.torch, dtype))

    def values(self, x):
        if self.name == "numpy":
            return np.asarray(x).astype(np.float64)
        return x.double().numpy()

    def round_to(self, x, dtype):
        """``x`` rounded to ``dtype`` and back to its own dtype."""
        if self.name == "numpy":
            return x.astype(ml_dtypes.bfloat16 if dtype == "bfloat16" else dtype).astype(x.dtype)
        return x.to(getattr(self.torch, dtype)).to(x.dtype)


def _data(seed, size=300):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(size) * 2.0 ** rng.integers(-12, 3, size)


def _run(rule, backend, params_dtype, mode, api):
    p = backend.array(np.abs(_data(0)) + 0.5, params_dtype)
    state = rule.init(p)
    with portopt.fast_path(mode), np.errstate(all="ignore"):
        for step in range(STEPS):
            g = backend.array(_data(10 + step), params_dtype)
            if api == "step":
                rule.step(p, g, state)
            else:
                p, state = rule.update(p, g, state)
    return [backend.values(p)] + [backend.values(state.slots[name]) for name in rule.slot_names()], state


def _skip_if_missing(backend_name):
    if backend_name not in TARGETS:
        pytest.skip(f"{backend_name} is not available here")


@pytest.mark.parametrize("backend_name, params_dtype, state_dtype", COMBINATIONS)
@pytest.mark.parametrize("variant", _first_variants())
def test_every_path_gives_the_bits_of_the_reference(variant, backend_name, params_dtype, state_dtype):
    _skip_if_missing(backend_name)
    backend = _Backend(backend_name)
    rule = _with_state_dtype(variant, state_dtype)
    reference, state = _run(rule, backend, params_dtype, "off", "update")
    for name in rule.slot_names():
        assert portopt.numerics.dtype_name(None, state.slots[name].dtype) == state_dtype
    for mode in ("auto", "compiled", "blocked"):
        for api in ("step", "update"):
            got, _ = _run(rule, backend, params_dtype, mode, api)
            for a, b in zip(got, reference):
                assert np.array_equal(a, b, equal_nan=True), (mode, api)


@pytest.mark.parametrize("backend_name, params_dtype, state_dtype", COMBINATIONS)
@pytest.mark.parametrize("variant", _first_variants())
def test_state_dtype_is_the_state_rounded_after_every_step(variant, backend_name, params_dtype, state_dtype):
    """Independent formulation: compute-dtype state, rounded to ``state_dtype`` when made and
    after each step."""
    _skip_if_missing(backend_name)
    backend = _Backend(backend_name)
    rule, plain = _with_state_dtype(variant, state_dtype), make_rule(variant)
    got, _ = _run(rule, backend, params_dtype, "off", "update")
    p = backend.array(np.abs(_data(0)) + 0.5, params_dtype)
    state = plain.init(p)
    state.slots = {name: backend.round_to(x, state_dtype) for name, x in state.slots.items()}  # Rprop's lr
    with np.errstate(all="ignore"):
        for step in range(STEPS):
            p, state = plain.update(p, backend.array(_data(10 + step), params_dtype), state)
            state.slots = {name: backend.round_to(x, state_dtype) for name, x in state.slots.items()}
    expected = [backend.values(p)] + [backend.values(state.slots[name]) for name in plain.slot_names()]
    for a, b in zip(got, expected):
        assert np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("backend_name", ["numpy", "torch-cpu"])
def test_bfloat16_state_checkpoints_round_trip_and_cross_backends(tmp_path, backend_name):
    _skip_if_missing(backend_name)
    backend = _Backend(backend_name)
    rule = portopt.Adam(lr=1e-2, state_dtype="bfloat16")
    (values, state) = _run(rule, backend, "float32", "auto", "step")
    portopt.save(tmp_path / "opt.npz", rule.state_dict(state))
    for like_name in ("numpy", "torch-cpu"):
        if like_name not in TARGETS:
            continue
        like_backend = _Backend(like_name)
        loaded = rule.load_state_dict(portopt.load(tmp_path / "opt.npz"), like=like_backend.array(_data(0), "float32"))
        for name in rule.slot_names():
            assert portopt.numerics.dtype_name(None, loaded.slots[name].dtype) == "bfloat16"
            assert np.array_equal(like_backend.values(loaded.slots[name]), backend.values(state.slots[name]))


def test_bad_state_dtype_is_refused_naming_the_argument():
    with pytest.raises(ValueError, match="state_dtype"):
        portopt.Adam(state_dtype="int8")
    with pytest.raises(TypeError, match="state_dtype"):
        portopt.SGD(state_dtype=np.float16)


def test_a_state_of_another_dtype_is_refused_before_anything_is_written():
    rule = portopt.Adam(state_dtype="float16")
    p = np.ones(4, np.float16)
    wrong = portopt.Adam().init(p)  # float32 state
    before = p.copy()
    with pytest.raises((TypeError, ValueError), match="float16"):
        rule.step(p, np.ones(4, np.float16), wrong)
    assert np.array_equal(p, before)
    checkpoint = portopt.Adam().state_dict(wrong)
    with pytest.raises(portopt.CheckpointError, match="float16"):
        rule.load_state_dict(checkpoint, like=p)


def test_sixteen_bit_state_halves_the_state_memory():
    p = np.ones(1000, np.float16)
    wide, narrow = portopt.Adam().init(p), portopt.Adam(state_dtype="float16").init(p)
    for name in ("exp_avg", "exp_avg_sq"):
        assert wide.slots[name].nbytes == 4000 and narrow.slots[name].nbytes == 2000


@pytest.mark.parametrize("state_dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("rule_name", ["Adam", "RMSProp", "Rprop"])
def test_extreme_values_in_sixteen_bit_state_give_one_set_of_bits(rule_name, state_dtype):
    """Gradients whose squares overflow float16 (inf in the state), subnormal ones that round
    to zero or to a subnormal state, NaN and ±inf: every path still gives the reference's bits."""
    info = np.finfo(np.float16)
    extremes = np.array([1e3, -3e2, 6e4, 1e-7, -6e-8, 0.0, -0.0, np.nan, np.inf, -np.inf, float(info.max), 1.0])
    rule = portopt.RULES[rule_name](state_dtype=state_dtype)
    results = []
    for mode in ("off", "auto", "compiled", "blocked"):
        for api in ("step", "update"):
            p = np.tile(np.array([0.5, -2.0, 1e-3, 3.0], np.float32), 6)
            state = rule.init(p)
            with portopt.fast_path(mode), np.errstate(all="ignore"):
                for step in range(5):
                    g = np.roll(np.tile(extremes, 2), step).astype(np.float32)
                    if api == "step":
                        rule.step(p, g, state)
                    else:
                        p, state = rule.update(p, g, state)
            results.append([p.astype(np.float64)] + [np.asarray(state.slots[n]).astype(np.float64)
                                                     for n in rule.slot_names()])
    for other in results[1:]:
        for a, b in zip(other, results[0]):
            assert np.array_equal(a, b, equal_nan=True)
    assert any(np.isinf(s).any() for s in results[0][1:]) or rule_name == "Rprop"  # the overflow happened
