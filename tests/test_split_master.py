"""master_weights="split": bfloat16 params and an int16 slot of low halves (their bit patterns) are exactly a float32
master weight, stepped bit for bit as float32 params are, on every backend and API."""

from __future__ import annotations

import numpy as np
import pytest

import portopt
from helpers import step_then_update
from portopt.conformance.cases import load_matrix
from portopt.conformance.digests import digest

ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 on NumPy needs ml_dtypes (the bfloat16 extra)")
BF16 = np.dtype(ml_dtypes.bfloat16)


# --- the test's own halves, in NumPy bit arithmetic (independent of portopt.split_master) -------
def joined(params: np.ndarray, low: np.ndarray) -> np.ndarray:
    bits = (params.view(np.uint16).astype(np.uint32) << np.uint32(16)) | low.view(np.uint16).astype(np.uint32)
    return bits.view(np.float32)


def halves(master: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    bits = np.where(np.isnan(master), np.uint32(0x7FC00000), master.view(np.uint32))
    return ((bits >> np.uint32(16)).astype(np.uint16).view(BF16),
            (bits & np.uint32(0xFFFF)).astype(np.uint16).view(np.int16))


def bits_of(x) -> bytes:
    x = np.asarray(x)
    return np.where(np.isnan(x), np.array(np.nan, x.dtype), x).tobytes() if x.dtype.kind == "f" else x.tobytes()


def _grads(rng: np.random.Generator, steps: int, size: int) -> list[np.ndarray]:
    """bfloat16 gradients, with zeros, huge values and subnormals among them."""
    out = []
    for _ in range(steps):
        g = (rng.standard_normal(size) * 10.0 ** rng.integers(-3, 3, size)).astype(np.float32)
        g[rng.integers(0, size, 3)] = [0.0, 3e38, 1e-39]
        out.append(g.astype(BF16))
    return out


def _float32_twin(name: str, **options):
    return portopt.RULES[name](**options), portopt.RULES[name](**options, master_weights="split")


DEFAULT_TIER = ("Adam", "SGD", "RMSProp", "Lion", "ASGD", "NAdam")  # the long tier steps the others too


@pytest.mark.parametrize("name", [pytest.param(name, marks=() if name in DEFAULT_TIER else pytest.mark.long)
                                  for name in portopt.RULES])
def test_every_rule_split_is_the_float32_run_on_numpy(name):
    rng = np.random.default_rng(3)
    params = {"w": rng.standard_normal((7, 5)).astype(BF16), "b": rng.standard_normal(5).astype(BF16)}
    plain, split = _float32_twin(name)
    master = {k: v.astype(np.float32) for k, v in params.items()}
    plain_state, state = plain.init(master), split.init(params)
    pure_params, pure_state = {k: v.copy() for k, v in params.items()}, split.init(params)
    for step, (gw, gb) in enumerate(zip(_grads(rng, 12, 35), _grads(rng, 12, 5))):
        grads = {"w": gw.reshape(7, 5), "b": gb}
        plain.step(master, {k: v.astype(np.float32) for k, v in grads.items()}, plain_state)
        split.step(params, grads, state)
        pure_params, pure_state = split.update(pure_params, grads, pure_state)
        for key in params:
            low = state.slots["master_low"][key]
            assert bits_of(joined(params[key], low)) == bits_of(master[key]), (step, key)
            high, _ = halves(master[key])
            assert bits_of(params[key]) == bits_of(high), "the params are the master truncated to bfloat16"
            assert bits_of(pure_params[key]) == bits_of(params[key]) and bits_of(
                pure_state.slots["master_low"][key]) == bits_of(low), "update and step agree"
            for slot in plain.slot_names():
                assert bits_of(state.slots[slot][key]) == bits_of(plain_state.slots[slot][key])
    assert state.step == plain_state.step == 12 and state.host == plain_state.host


@pytest.mark.parametrize("mode", ["off", "blocked", "compiled", "shim"])
def test_split_gives_one_set_of_bits_on_every_executor(mode):
    if mode == "shim":
        from portopt.kernels import host_shim

        if host_shim.compiler() is None:
            pytest.skip("no C++ compiler for the host shim")
    rng = np.random.default_rng(4)
    p0 = rng.standard_normal(300).astype(BF16)
    grads = _grads(rng, 6, 300)

    def run(mode):
        with portopt.fast_path(mode):
            return step_then_update(portopt.AdamW(lr=1e-2, weight_decay=0.1, amsgrad=True, master_weights="split"),
                                    p0, grads)

    assert run(mode) == run("off")


def test_split_golden_vectors_are_the_float32_run_truncated():
    """The golden vectors of Adam/split, recomputed here as float32 Adam on the widened inputs
    and split with this test's own bit arithmetic."""
    from portopt.conformance.golden import load_golden

    golden = load_golden("Adam")
    cases = [case for case in load_matrix().cases if case.variant == "split"]
    assert {case.dtype for case in cases} == {"bfloat16"} and len(cases) == 8
    compared = 0
    for case in cases:
        if case.leaves[0].view is not None or len(case.leaves) != 1:
            continue  # views and trees: the conformance suite runs them on every backend
        rule = portopt.Adam(lr=0.01)
        master = case.host_bases()[0].astype(np.float32)
        state = rule.init(master)
        for step in range(1, case.steps + 1):
            rule.step(master, case.host_gradients(step)[0].astype(np.float32), state)
            if str(step) in golden[case.id]["checkpoints"]:
                high, low = halves(master)
                kept = golden[case.id]["checkpoints"][str(step)]
                assert kept["params"] == digest(high) and kept["master_low"] == digest(low), (case.id, step)
                assert kept["exp_avg"] == digest(state.slots["exp_avg"]), (case.id, step)
                compared += 1
    assert compared == 5 * len(load_matrix().config["checkpoints"])  # scalar, one, prime, matrix, empty


def test_split_moves_where_plain_bfloat16_stalls_and_stays_within_one_ulp_of_float32():
    def run(dtype, master_weights=None):
        p = np.full(64, 1.0, dtype=dtype)
        rule = portopt.SGD(lr=1e-4, master_weights=master_weights)
        state = rule.init(p)
        g = np.linspace(0.5, 1.5, 64).astype(BF16).astype(dtype)  # the same gradients in both runs
        for _ in range(2000):
            rule.step(p, g, state)
        return p, state

    master, _ = run(np.float32)
    plain, _ = run(BF16)
    split, state = run(BF16, "split")
    assert np.array_equal(plain.astype(np.float64), np.ones(64)), "plain bfloat16 loses every update"
    ulp = np.spacing(master.astype(BF16)).astype(np.float64)
    assert np.max(np.abs(split.astype(np.float64) - master) / ulp) <= 1.0
    assert bits_of(joined(split, state.slots["master_low"])) == bits_of(master)


def test_a_nan_master_is_stored_as_the_quiet_nan_and_skip_nonfinite_keeps_both_halves():
    rule = portopt.SGD(lr=1.0, master_weights="split")
    p = np.array([1.0, 2.0], dtype=BF16)
    state = rule.init(p)
    rule.step(p, np.array([np.nan, 1.0], dtype=BF16), state)
    assert p.view(np.uint16)[0] == 0x7FC0 and state.slots["master_low"][0] == 0
    skipping = portopt.SGD(lr=1.0, master_weights="split", skip_nonfinite=True)
    q = np.array([1.5, 2.5], dtype=BF16)
    kept = skipping.init(q)
    skipping.step(q, np.array([0.25, 0.125], dtype=BF16), kept)
    before = (bits_of(q), bits_of(kept.slots["master_low"]))
    skipping.step(q, np.array([np.inf, 1.0], dtype=BF16), kept)
    assert (bits_of(q), bits_of(kept.slots["master_low"])) == before and kept.skipped == 1 and kept.step == 1


def _wrong_inputs():
    p = np.ones(4, dtype=BF16)
    rule = portopt.Adam(master_weights="split")
    good = rule.init(p)
    low_float = portopt.State(rule="Adam", step=0, slots={**good.slots, "master_low": np.zeros(4, np.float32)})
    no_low = portopt.State(rule="Adam", step=0, slots={k: v for k, v in good.slots.items() if k != "master_low"})
    return [
        ("float16 params", np.ones(4, np.float16), np.ones(4, np.float16), None, TypeError, r"params .*bfloat16"),
        ("float32 params", np.ones(4, np.float32), np.ones(4, np.float32), None, TypeError, r"params .*bfloat16"),
        ("low halves as float32", p, np.ones(4, dtype=BF16), low_float, TypeError, r"master_low.*int16"),
        ("no low halves", p, np.ones(4, dtype=BF16), no_low, ValueError, r"master_low"),
        ("grads of another shape", p, np.ones(5, dtype=BF16), good, ValueError, r"grads.*shape"),
        ("grads of another dtype", p, np.ones(4, np.float32), good, TypeError, r"grads.*dtype"),
    ]


@pytest.mark.parametrize(("what", "params", "grads", "state", "error", "match"), _wrong_inputs(),
                         ids=[case[0] for case in _wrong_inputs()])
def test_bad_input_is_named_and_nothing_is_written(what, params, grads, state, error, match):
    rule = portopt.Adam(master_weights="split")
    if state is None:  # params a split rule cannot take: init refuses them, and so does a step
        with pytest.raises(error, match=match):
            rule.init(params)
        state = portopt.State(rule="Adam", step=0, slots={"exp_avg": np.zeros(4, np.float32),
                                                         "exp_avg_sq": np.zeros(4, np.float32),
                                                         "master_low": np.zeros(4, np.int16)})
    before = bits_of(params), {k: bits_of(v) for k, v in state.slots.items()}
    for call in (rule.step, rule.update):
        with pytest.raises(error, match=match):
            call(params, grads, state)
        assert (bits_of(params), {k: bits_of(v) for k, v in state.slots.items()}) == before and state.step == 0


def test_a_stopped_write_marks_the_state_torn(monkeypatch):
    from portopt.backends.numpy_adapter import NumpyAdapter

    rule = portopt.Adam(master_weights="split")
    p = np.ones(4, dtype=BF16)
    state = rule.init(p)
    calls = []

    def failing(self, destination, source):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("stopped half way")
        np.copyto(destination, source)

    monkeypatch.setattr(NumpyAdapter, "write", failing)
    with pytest.raises(MemoryError):
        rule.step(p, np.ones(4, dtype=BF16), state)
    monkeypatch.undo()
    assert state.torn
    with pytest.raises(ValueError, match="torn"):
        rule.step(p, np.ones(4, dtype=BF16), state)


def test_written_arrays_may_not_share_memory_and_a_gradient_that_is_a_param_is_read_first():
    rule = portopt.SGD(lr=0.5, master_weights="split")
    base = np.ones(4, dtype=BF16)
    state = rule.init([base, base])
    with pytest.raises(ValueError, match="share memory|same array|twice"):
        rule.step([base, base], [np.ones(4, dtype=BF16)] * 2, state)
    p = np.full(4, 2.0, dtype=BF16)
    alone = rule.init(p)
    rule.step(p, p, alone)  # g is p: the step reads the gradient before writing the param
    assert np.array_equal(p.astype(np.float32), np.full(4, 1.0, np.float32))


def test_a_schedule_runs_once_per_step_before_the_checks():
    calls = []

    def lr(step):
        calls.append(step)
        return 1e-3

    rule = portopt.NAdam(lr=lr, master_weights="split")
    p = np.ones(8, dtype=BF16)
    state = rule.init(p)
    for _ in range(3):
        rule.step(p, np.ones(8, dtype=BF16), state)
    assert calls == [0, 1, 2]
    with pytest.raises(ValueError, match="shape"):
        rule.step(p, np.ones(9, dtype=BF16), state)
    assert calls == [0, 1, 2, 3], "the schedule ran, then the check refused the step"


def test_torch_split_gives_numpy_bits_and_a_checkpoint_resumes_on_numpy(tmp_path):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    host = rng.standard_normal(60).astype(BF16)
    grads = _grads(rng, 8, 60)

    def tensor(x):
        return torch.from_numpy(x.view(np.uint16).copy()).view(torch.bfloat16)

    rule = portopt.Adam(lr=1e-2, master_weights="split")
    on_numpy, on_torch = rule.init(host), rule.init(tensor(host))
    params = tensor(host)
    for g in grads[:4]:
        rule.step(host, g, on_numpy)
        rule.step(params, tensor(g), on_torch)
    assert on_torch.slots["master_low"].dtype == torch.int16
    assert host.tobytes() == params.view(torch.uint16).numpy().tobytes()
    portopt.save(tmp_path / "split.npz", rule.state_dict(on_torch))
    resumed_params = params.view(torch.uint16).numpy().copy().view(BF16)
    resumed = rule.load_state_dict(portopt.load(tmp_path / "split.npz"), resumed_params)
    assert resumed.slots["master_low"].dtype == np.int16
    for g in grads[4:]:
        rule.step(host, g, on_numpy)
        rule.step(resumed_params, g, resumed)
    assert resumed_params.tobytes() == host.tobytes()
    assert all(bits_of(resumed.slots[k]) == bits_of(on_numpy.slots[k]) for k in rule.slot_names())


def test_a_checkpoint_of_another_master_weights_option_is_refused():
    p = np.ones(4, dtype=BF16)
    kahan = portopt.Adam(master_weights="kahan")
    with pytest.raises(portopt.CheckpointError, match="master_low"):
        portopt.Adam(master_weights="split").load_state_dict(kahan.state_dict(kahan.init(p)), p)


def test_drop_in_split_matches_the_rule_and_resumes_from_its_state_dict():
    torch = pytest.importorskip("torch")
    import portopt.torch as pt

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).to(torch.bfloat16)
    twin = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1)).to(torch.bfloat16)
    twin.load_state_dict(model.state_dict())
    optimizer = pt.AdamW(model.parameters(), lr=1e-2, master_weights="split")
    rule = portopt.AdamW(lr=1e-2, master_weights="split")
    params = [p.detach() for p in twin.parameters()]
    state = rule.init(params)
    x = torch.randn(32, 8).to(torch.bfloat16)
    for _ in range(5):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()
        twin.zero_grad()
        twin(x).square().mean().backward()
        rule.step(params, [p.grad for p in twin.parameters()], state)
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a.detach().view(torch.int16), b.detach().view(torch.int16))
    assert optimizer.state[next(iter(model.parameters()))]["master_low"].dtype == torch.int16
    saved = optimizer.state_dict()
    resumed_model = torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.Tanh(),
                                        torch.nn.Linear(6, 1)).to(torch.bfloat16)
    resumed_model.load_state_dict(model.state_dict())
    resumed = pt.AdamW(resumed_model.parameters(), lr=1e-2, master_weights="split")
    resumed.load_state_dict(saved)
    for net, opt in ((model, optimizer), (resumed_model, resumed)):
        opt.zero_grad()
        net(x).square().mean().backward()
        opt.step()
    for a, b in zip(model.parameters(), resumed_model.parameters()):
        assert torch.equal(a.detach().view(torch.int16), b.detach().view(torch.int16))


def test_clipped_and_partitioned_split_are_the_float32_runs():
    rng = np.random.default_rng(6)
    p0 = rng.standard_normal(40).astype(BF16)
    clipped = portopt.chain(portopt.ClipByGlobalNorm(0.5), portopt.Adam(lr=1e-2, master_weights="split"))
    clipped32 = portopt.chain(portopt.ClipByGlobalNorm(0.5), portopt.Adam(lr=1e-2))
    parts = portopt.partition({"half": portopt.Adam(lr=1e-2, master_weights="split"), "wide": portopt.SGD(lr=0.1)},
                              {"a": "half", "b": "wide"})
    p, master = p0.copy(), p0.astype(np.float32)
    s, s32 = clipped.init(p), clipped32.init(master)
    tree = {"a": p0.copy(), "b": np.ones(3, np.float32)}
    part_state = parts.init(tree)
    part_master = p0.astype(np.float32)
    part_plain = portopt.Adam(lr=1e-2)
    part_plain_state = part_plain.init(part_master)
    for g in _grads(rng, 6, 40):
        clipped.step(p, g, s)
        clipped32.step(master, g.astype(np.float32), s32)
        tree, part_state = parts.update(tree, {"a": g, "b": np.ones(3, np.float32)}, part_state)
        part_plain.step(part_master, g.astype(np.float32), part_plain_state)
    assert bits_of(joined(p, s.slots["master_low"])) == bits_of(master)
    assert bits_of(joined(tree["a"], part_state.parts["half"].slots["master_low"][0])) == bits_of(part_master)


def test_multisteps_of_a_split_rule_is_refused():
    with pytest.raises(TypeError, match="split"):
        portopt.MultiSteps(portopt.Adam(master_weights="split"), 4)


def test_jax_split_eager_and_jitted_give_numpy_bits():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    rng = np.random.default_rng(7)
    host = rng.standard_normal(50).astype(BF16)
    rule = portopt.Adam(lr=1e-2, master_weights="split")
    eager = jitted = jnp.asarray(host)
    eager_state = jitted_state = rule.init(eager)
    numpy_state = rule.init(host)
    update = jax.jit(rule.update)
    for g in [rng.standard_normal(50).astype(BF16) for _ in range(10)]:  # normal values: XLA flushes subnormals
        eager, eager_state = rule.update(eager, jnp.asarray(g), eager_state)
        jitted, jitted_state = update(jitted, jnp.asarray(g), jitted_state)
        rule.step(host, g, numpy_state)
    for params, state in ((eager, eager_state), (jitted, jitted_state)):
        assert np.asarray(params).tobytes() == host.tobytes()
        assert np.asarray(state.slots["master_low"]).tobytes() == numpy_state.slots["master_low"].tobytes()
    with pytest.raises(TypeError, match="bfloat16"):
        rule.update(jnp.ones(3, jnp.float32), jnp.ones(3, jnp.float32), eager_state)


# --- found by an independent attacker --------------------------------------------------------
def test_a_split_drop_in_and_its_state_dict_survive_pickle():
    torch = pytest.importorskip("torch")
    import pickle

    import portopt.torch as pt

    weight = torch.nn.Parameter(torch.randn(5).to(torch.bfloat16))
    weight.grad = torch.randn(5).to(torch.bfloat16)
    optimizer = pt.AdamW([weight], master_weights="split")
    optimizer.step()
    copy = pickle.loads(pickle.dumps(optimizer))  # torch cannot unpickle uint16 tensors: master_low is int16
    low = optimizer.state[weight]["master_low"]
    assert torch.equal(copy.state[copy.param_groups[0]["params"][0]]["master_low"], low)
    assert torch.equal(pickle.loads(pickle.dumps(optimizer.state_dict()))["state"][0]["master_low"], low)


def test_jax_split_refuses_gradients_of_another_dtype_or_backend_after_evaluating_the_schedule():
    pytest.importorskip("jax")
    import jax.numpy as jnp

    calls = []

    def lr(step):
        calls.append(step)
        return 1e-2

    rule = portopt.Adam(lr=lr, master_weights="split")
    p = jnp.ones(8, jnp.bfloat16)
    state = rule.init(p)
    for bad, match in ((jnp.ones(8, jnp.float32), r"grads .*float32"), (np.ones(8, BF16), r"grads .*JAX"),
                       ([jnp.ones(8, jnp.bfloat16)], "tree structure")):
        with pytest.raises((TypeError, ValueError), match=match):
            rule.update(p, bad, state)
    assert calls == [0, 0, 0], "each refused step evaluated its schedule once, first"
    bad_state = portopt.State(rule="Adam", step=0, slots={**state.slots, "master_low": np.zeros(8, np.int16)})
    with pytest.raises(TypeError, match="master_low"):
        rule.update(p, jnp.ones(8, jnp.bfloat16), bad_state)


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_a_split_checkpoint_loads_only_onto_bfloat16_params(dtype):
    rule = portopt.Adam(master_weights="split")
    saved = rule.state_dict(rule.init(np.ones(4, BF16)))
    with pytest.raises(TypeError, match="bfloat16"):
        rule.load_state_dict(saved, np.ones(4, dtype))


def test_a_bfloat16_state_of_zero_dimensional_params_resumes_on_numpy():
    rule = portopt.Adam(master_weights="split", state_dtype="bfloat16")
    p = np.array(2.0, BF16)
    state = rule.init(p)
    rule.step(p, np.array(0.5, BF16), state)
    resumed = rule.load_state_dict(rule.state_dict(state), p.copy())
    assert all(resumed.slots[k].shape == () for k in rule.slot_names())
    q = p.copy()
    rule.step(p, np.array(0.25, BF16), state)
    rule.step(q, np.array(0.25, BF16), resumed)
    assert bits_of(p) == bits_of(q)


@pytest.mark.parametrize("split", [True, False])
def test_a_partition_refuses_a_slot_sharing_memory_with_another_parts_arrays(split):
    options = {"master_weights": "split"} if split else {}
    dtype = BF16 if split else np.float64
    part = portopt.partition({"x": portopt.Adam(**options), "y": portopt.SGD(lr=0.1, momentum=0.9, **options)},
                             {"a": "x", "b": "y"})
    params = {"a": np.ones(5, dtype), "b": np.ones(4, dtype)}
    state = part.init(params)
    stolen = params["a"].view(np.int16)[:4] if split else state.parts["x"].slots["exp_avg"][0][:4]
    state.parts["y"].slots["master_low" if split else "momentum_buffer"] = [stolen]
    before = bits_of(params["a"]), bits_of(params["b"])
    with pytest.raises(ValueError, match="share memory"):
        part.step(params, {"a": np.ones(5, dtype), "b": np.ones(4, dtype)}, state)
    assert (bits_of(params["a"]), bits_of(params["b"])) == before


def test_a_drop_in_group_switched_to_another_master_weights_option_drops_the_old_buffer():
    torch = pytest.importorskip("torch")
    import portopt.torch as pt

    weight = torch.nn.Parameter(torch.randn(6).to(torch.bfloat16))
    optimizer = pt.AdamW([weight], lr=1e-2, master_weights="split")
    for option in ("split", None, "split"):
        optimizer.param_groups[0]["master_weights"] = option
        weight.grad = torch.randn(6).to(torch.bfloat16)
        optimizer.step()
        assert ("master_low" in optimizer.state[weight]) == (option == "split")


def test_update_of_zero_dimensional_params_returns_arrays():
    rule = portopt.Adam(master_weights="split")
    p = np.array(1.5, BF16)
    new_p, state = rule.update(p, np.array(0.5, BF16), rule.init(p))
    assert isinstance(new_p, np.ndarray) and new_p.shape == () and new_p.dtype == BF16
    assert isinstance(state.slots["master_low"], np.ndarray) and state.slots["master_low"].shape == ()
