"""master_weights="kahan": a compensation slot keeps what rounding the params dropped; the same
bits on every executor and backend; tracks a float32 master where plain 16-bit stalls."""

from __future__ import annotations

import numpy as np
import pytest

import portopt
from helpers import step_then_update

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 on NumPy needs ml_dtypes (the bfloat16 extra)")
BF16 = np.dtype(ml_dtypes.bfloat16)
HALVES = [np.dtype(np.float16), BF16]


def _stalling_run(dtype, master_weights=None, state_dtype=None, steps=2000):
    """SGD with updates of 5e-5 to 1.5e-4 on params near 1: below half a bfloat16 ulp (2**-8)."""
    p = np.full(64, 1.0, dtype=dtype)
    rule = portopt.SGD(lr=1e-4, master_weights=master_weights, state_dtype=state_dtype)
    state = rule.init(p)
    g = np.linspace(0.5, 1.5, 64).astype(dtype)
    for _ in range(steps):
        rule.step(p, g, state)
    return p.astype(np.float64)


def test_kahan_moves_where_plain_bfloat16_stalls_and_tracks_the_float32_master():
    master = _stalling_run(np.float32)
    ulp = np.spacing(master.astype(BF16)).astype(np.float64)
    assert np.array_equal(_stalling_run(BF16), np.ones(64)), "plain bfloat16 loses every update"
    assert np.abs(master - 1).min() > 0.09
    kahan = _stalling_run(BF16, "kahan")
    assert np.max(np.abs(kahan - master) / ulp) <= 1.0  # float32 compensation: within one ulp
    pure = _stalling_run(BF16, "kahan", "bfloat16")  # pure bfloat16: the compensation is bfloat16 too
    assert np.max(np.abs(pure - master) / ulp) <= 2.0


def test_kahan_is_the_formula_computed_by_hand():
    rng = np.random.default_rng(0)
    p = rng.standard_normal(100).astype(np.float16)
    g = rng.standard_normal(100).astype(np.float16)
    rule, plain = portopt.SGD(lr=0.01, momentum=0.9, master_weights="kahan"), portopt.SGD(lr=0.01, momentum=0.9)
    state = rule.init(p)
    hand_p, buf, comp = p.astype(np.float32), np.zeros(100, np.float32), np.zeros(100, np.float32)
    for step in range(5):
        rule.step(p, g, state)
        g32 = g.astype(np.float32)
        buf = g32 if step == 0 else np.float32(0.9) * buf + np.float32(1.0) * g32
        new = hand_p - np.float32(0.01) * buf
        total = comp + (new - hand_p)
        stored = (hand_p + total).astype(np.float16).astype(np.float32)
        comp = total - (stored - hand_p)
        hand_p = stored
        assert p.tobytes() == hand_p.astype(np.float16).tobytes(), step
        assert state.slots["compensation"].tobytes() == comp.tobytes()
    assert plain.slot_names() == ("momentum_buffer",) and rule.slot_names() == ("momentum_buffer", "compensation")


DEFAULT_TIER = ("Adam", "SGD", "RMSProp", "Lion")  # the long tier compiles the others' loops too


@pytest.mark.parametrize("dtype", HALVES + [np.dtype(np.float32)], ids=str)
@pytest.mark.parametrize("name", [pytest.param(name, marks=() if name in DEFAULT_TIER else pytest.mark.long)
                                  for name in portopt.RULES])
def test_every_rule_with_kahan_gives_one_set_of_bits_on_every_executor(name, dtype):
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(300).astype(dtype)
    grads = [rng.standard_normal(300).astype(dtype) for _ in range(4)]
    results = set()
    for mode in ("off", "blocked", "compiled", "auto"):
        with portopt.fast_path(mode):
            results.add(step_then_update(portopt.RULES[name](master_weights="kahan"), p0, grads))
    assert len(results) == 1


def test_kahan_on_torch_bfloat16_gives_numpy_bits_and_checkpoints(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    host = rng.standard_normal(50).astype(BF16)
    grads = [rng.standard_normal(50).astype(BF16) for _ in range(6)]
    rule = portopt.AdamW(lr=1e-3, master_weights="kahan", state_dtype="bfloat16")
    tensor = torch.from_numpy(host.view(np.uint16).copy()).view(torch.bfloat16)
    a, b = rule.init(host), rule.init(tensor)
    for g in grads[:3]:
        rule.step(host, g, a)
        rule.step(tensor, torch.from_numpy(g.view(np.uint16).copy()).view(torch.bfloat16), b)
    assert host.tobytes() == tensor.view(torch.uint16).numpy().tobytes()
    portopt.save(tmp_path / "k.npz", rule.state_dict(b))  # saved from torch, resumed on NumPy
    resumed = tensor.view(torch.uint16).numpy().copy().view(BF16)
    c = rule.load_state_dict(portopt.load(tmp_path / "k.npz"), resumed)
    assert c.slots["compensation"].dtype == BF16
    for g in grads[3:]:
        rule.step(host, g, a)
        rule.step(resumed, g, c)
    assert resumed.tobytes() == host.tobytes()
    assert c.slots["compensation"].tobytes() == a.slots["compensation"].tobytes()


def test_drop_in_takes_master_weights():
    torch = pytest.importorskip("torch")
    import portopt.torch as pt

    weight = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
    optimizer = pt.SGD([weight], lr=1e-4, master_weights="kahan")
    for _ in range(100):
        weight.grad = torch.ones_like(weight)
        optimizer.step()
    assert float(weight.detach()[0]) < 1.0, "the compensation carried the sub-ulp updates over"
    assert "compensation" in optimizer.state[weight]


@pytest.mark.parametrize(("value", "match"), [("kahn", "master_weights"), ("Split", "master_weights"),
                                              (True, "master_weights"), (1, "master_weights")])
def test_master_weights_is_checked(value, match):
    with pytest.raises(ValueError, match=match):
        portopt.Adam(master_weights=value)
