"""Composition without losing the bit order: MultiSteps, partition, masked, chain."""

from __future__ import annotations

import numpy as np
import pytest

import portopt
from portopt.checkpoint import CheckpointError

ACCUMULATING_RULES = [name for name, cls in portopt.RULES.items() if not cls.host_state_uses_gradients]


def _grads(rng, shape, dtype, count):
    return [rng.standard_normal(shape).astype(dtype) for _ in range(count)]


@pytest.mark.parametrize("mode", ["off", "auto"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", ACCUMULATING_RULES)
def test_multisteps_is_one_rule_step_on_the_mean(name, dtype, mode):
    rng = np.random.default_rng(0)
    rule = portopt.RULES[name]()
    accumulating = portopt.MultiSteps(rule, 3)
    with portopt.fast_path(mode):
        p = rng.standard_normal(40).astype(dtype)
        q = p.copy()
        s, t = accumulating.init(p), rule.init(q)
        for cycle in range(3):
            gs = _grads(rng, 40, dtype, 3)
            for index, g in enumerate(gs):
                before = p.copy()
                if cycle % 2:  # update and step give the same bits
                    p, s = accumulating.update(p, g, s)
                else:
                    accumulating.step(p, g, s)
                if index < 2:
                    assert p.tobytes() == before.tobytes(), "params change only on every k-th call"
            rule.step(q, ((gs[0] + gs[1]) + gs[2]) / np.asarray(3, dtype=dtype), t)
            assert p.tobytes() == q.tobytes(), (name, cycle)
    assert s.step == 9 and t.step == 3


def test_multisteps_on_float16_steps_with_the_float32_mean():
    """16-bit params: the mean stays in the compute dtype; checked against the rule's kernel
    run by hand on float32 copies, rounded once at the end (an independent formulation)."""
    rng = np.random.default_rng(1)
    rule = portopt.Adam(lr=0.01)
    p = rng.standard_normal(64).astype(np.float16)
    accumulating = portopt.MultiSteps(rule, 2)
    state = accumulating.init(p)
    master, m, v = p.astype(np.float32), np.zeros(64, np.float32), np.zeros(64, np.float32)
    for step in range(4):
        gs = _grads(rng, 64, np.float16, 2)
        for g in gs:
            accumulating.step(p, g, state)
        mean = (gs[0].astype(np.float32) + gs[1].astype(np.float32)) / np.float32(2)
        scalars = rule.host_scalars(step)
        as_arrays = type(scalars)(*[x if isinstance(x, bool) else np.float32(x) for x in scalars])
        master, m, v = type(rule).kernel(np, as_arrays, master, mean, m, v)
        master = master.astype(np.float16).astype(np.float32)
        assert p.tobytes() == master.astype(np.float16).tobytes(), step
        assert state.slots["exp_avg"].tobytes() == m.tobytes()


def test_multisteps_checkpoint_mid_cycle_resumes_bit_exact(tmp_path):
    rng = np.random.default_rng(2)
    rule = portopt.MultiSteps(portopt.NAdam(lr=0.01), 3)
    p = rng.standard_normal(10)
    grads = _grads(rng, 10, np.float64, 8)
    straight, s = p.copy(), rule.init(p)
    for g in grads:
        rule.step(straight, g, s)
    resumed, r = p.copy(), rule.init(p)
    for g in grads[:4]:
        rule.step(resumed, g, r)
    portopt.save(tmp_path / "c.npz", rule.state_dict(r))
    r = rule.load_state_dict(portopt.load(tmp_path / "c.npz"), resumed)
    for g in grads[4:]:
        rule.step(resumed, g, r)
    assert resumed.tobytes() == straight.tobytes() and r.step == 8 and r.host == s.host


def test_multisteps_skips_a_non_finite_call_without_counting_it():
    rule = portopt.MultiSteps(portopt.SGD(lr=0.1, skip_nonfinite=True), 2)
    p = np.ones(3)
    state = rule.init(p)
    rule.step(p, np.ones(3), state)
    rule.step(p, np.array([np.nan, 0, 0]), state)
    assert (state.step, state.skipped) == (1, 1) and np.array_equal(p, np.ones(3))
    rule.step(p, np.full(3, 3.0), state)
    assert np.array_equal(p, np.full(3, 1.0 - 0.1 * 2.0))


def test_clipping_each_micro_gradient_composes():
    rng = np.random.default_rng(3)
    gs = _grads(rng, 5, np.float64, 2)
    p = np.zeros(5)
    rule = portopt.Clipped(portopt.MultiSteps(portopt.SGD(lr=1.0), 2), 0.5)
    state = rule.init(p)
    for g in gs:
        rule.step(p, g, state)
    clipped = [portopt.clip_by_global_norm(g, 0.5)[0] for g in gs]
    assert p.tobytes() == (-((clipped[0] + clipped[1]) / 2.0)).tobytes()


@pytest.mark.parametrize(("rule", "k", "error", "match"), [
    (portopt.AdaGradNorm(), 2, TypeError, "AdaGradNorm"),
    (portopt.Clipped(portopt.Adam(), 1.0), 2, TypeError, "rule must be"),
    (portopt.Adam(), 0, ValueError, "k must be"),
    (portopt.Adam(), True, ValueError, "k must be"),
])
def test_multisteps_refuses_what_it_cannot_do(rule, k, error, match):
    with pytest.raises(error, match=match):
        portopt.MultiSteps(rule, k)


def _tree(rng, dtype="float32"):
    return {"w": rng.standard_normal((4, 3)).astype(dtype), "b": rng.standard_normal(3).astype(dtype),
            "frozen": rng.standard_normal(2).astype(dtype)}


LABELS = {"w": "weights", "b": "biases", "frozen": "frozen"}


def _separate(params):
    decay, plain = portopt.AdamW(lr=0.01, weight_decay=0.1), portopt.Adam(lr=0.01)
    return (decay, [params["w"]], decay.init([params["w"]])), (plain, [params["b"]], plain.init([params["b"]]))


@pytest.mark.parametrize("api", ["step", "update"])
def test_partition_is_bit_identical_to_separate_optimizers(api):
    rng = np.random.default_rng(4)
    params = _tree(rng)
    reference = {k: v.copy() for k, v in params.items()}
    separate = _separate(reference)
    opt = portopt.partition({"weights": portopt.AdamW(lr=0.01, weight_decay=0.1),
                             "biases": portopt.Adam(lr=0.01), "frozen": None}, LABELS)
    state = opt.init(params)
    assert sorted(state.parts) == ["biases", "weights"], "frozen leaves have no state"
    frozen = params["frozen"].copy()
    for _ in range(5):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in params.items()}
        if api == "step":
            opt.step(params, grads, state)
        else:
            params, state = opt.update(params, grads, state)
        for (rule, leaves, part_state), key in zip(separate, ("w", "b")):
            rule.step(leaves, [grads[key]], part_state)
            assert params[key].tobytes() == leaves[0].tobytes(), key
        assert params["frozen"].tobytes() == frozen.tobytes()
    assert state.step == 5


def test_partition_on_torch_tensors_matches_numpy():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    host = _tree(rng)
    tensors = {k: torch.from_numpy(v.copy()) for k, v in host.items()}
    opt = portopt.partition({"weights": portopt.AdamW(lr=0.01, weight_decay=0.1), "biases": portopt.Lion(lr=0.01),
                             "frozen": None}, lambda params: {k: LABELS[k] for k in params})
    a, b = opt.init(host), opt.init(tensors)
    for _ in range(3):
        grads = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in host.items()}
        opt.step(host, grads, a)
        opt.step(tensors, {k: torch.from_numpy(v) for k, v in grads.items()}, b)
    assert all(host[k].tobytes() == tensors[k].numpy().tobytes() for k in host)


def test_partition_step_writes_nothing_when_one_part_is_bad():
    rng = np.random.default_rng(6)
    params = _tree(rng)
    opt = portopt.partition({"weights": portopt.Adam(), "biases": portopt.Adam(), "frozen": None}, LABELS)
    state = opt.init(params)
    before = {k: v.copy() for k, v in params.items()}
    grads = {"w": np.ones((4, 3), np.float32), "b": np.ones(3, np.float64), "frozen": np.ones(2, np.float32)}
    with pytest.raises((TypeError, ValueError), match="grads"):
        opt.step(params, grads, state)
    assert all(before[k].tobytes() == params[k].tobytes() for k in params)
    assert state.step == 0 and all(part.step == 0 for part in state.parts.values())


@pytest.mark.parametrize(("labels", "match"), [
    ({"w": "weights", "b": "biases"}, "labels must have the tree"),
    ({"w": "weights", "b": "nope", "frozen": None}, r"labels\['b'\] is 'nope'"),
])
def test_partition_labels_are_checked(labels, match):
    params = _tree(np.random.default_rng(7))
    opt = portopt.partition({"weights": portopt.Adam(), "biases": portopt.Adam(), None: None}, labels)
    with pytest.raises(ValueError, match=match):
        opt.init(params)


def test_partition_refuses_other_states_and_grads():
    params = _tree(np.random.default_rng(8))
    opt = portopt.partition({"weights": portopt.Adam(), "biases": portopt.SGD(), "frozen": None}, LABELS)
    state = opt.init(params)
    with pytest.raises(TypeError, match="state must be"):
        opt.step(params, params, portopt.Adam().init(params))
    with pytest.raises(ValueError, match="grads must have the tree"):
        opt.step(params, {"w": params["w"]}, state)
    with pytest.raises(TypeError, match=r"rules\['x'\]"):
        portopt.partition({"x": "adam"}, LABELS)


def test_masked_steps_only_the_masked_leaves():
    rng = np.random.default_rng(9)
    params = _tree(rng, "float64")
    mask = {"w": True, "b": False, "frozen": False}
    opt = portopt.masked(portopt.SGD(lr=0.1, momentum=0.9), mask)
    state = opt.init(params)
    assert list(state.parts) == ["masked"] and len(state.parts["masked"].slots["momentum_buffer"]) == 1
    reference, rule = [params["w"].copy()], portopt.SGD(lr=0.1, momentum=0.9)
    reference_state = rule.init(reference)
    b = params["b"].copy()
    for _ in range(3):
        grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
        new, state = opt.update(params, grads, state)
        assert new["b"] is not params["b"] and new["b"].tobytes() == b.tobytes()
        params = new
        rule.step(reference, [grads["w"]], reference_state)
        assert params["w"].tobytes() == reference[0].tobytes()
    with pytest.raises(ValueError, match=r"mask\['w'\] must be True or False"):
        portopt.masked(portopt.Adam(), {"w": 1, "b": False, "frozen": False}).init(params)


def test_partition_checkpoints_round_trip_and_refuse_tampering(tmp_path):
    rng = np.random.default_rng(10)
    params = _tree(rng, "float64")
    inner = portopt.masked(portopt.MultiSteps(portopt.Adam(), 2), lambda p: [True])
    opt = portopt.partition({"weights": portopt.AdamW(), "biases": inner, "frozen": None}, LABELS)
    state = opt.init(params)
    grads = {k: np.ones_like(v) for k, v in params.items()}
    for _ in range(3):
        opt.step(params, grads, state)
    portopt.save(tmp_path / "p.npz", opt.state_dict(state))
    loaded = opt.load_state_dict(portopt.load(tmp_path / "p.npz"), params)
    a, _ = opt.update(params, grads, state)
    b, _ = opt.update(params, grads, loaded)
    assert all(a[k].tobytes() == b[k].tobytes() for k in a)
    assert loaded.parts["biases"].parts["masked"].slots["accumulated"][0].tobytes() == \
        state.parts["biases"].parts["masked"].slots["accumulated"][0].tobytes()
    with pytest.raises(CheckpointError, match="parts"):
        portopt.partition({"weights": portopt.AdamW(), "biases": None, "frozen": None}, LABELS).load_state_dict(
            portopt.load(tmp_path / "p.npz"), params)
    raw = (tmp_path / "p.npz").read_bytes()
    (tmp_path / "bad.npz").write_bytes(raw.replace(b'"weights"', b'"weighty"', 1))
    with pytest.raises(CheckpointError):
        portopt.load(tmp_path / "bad.npz")


def test_chain_of_a_global_norm_clip_is_clipped_bit_for_bit():
    rng = np.random.default_rng(11)
    p = rng.standard_normal(30).astype(np.float32)
    q = p.copy()
    chained, clipped = portopt.chain(portopt.ClipByGlobalNorm(0.5), portopt.Adam()), portopt.Clipped(portopt.Adam(), 0.5)
    s, t = chained.init(p), clipped.init(q)
    for g in _grads(rng, 30, np.float32, 5):
        chained.step(p, g, s)
        clipped.step(q, g, t)
    assert p.tobytes() == q.tobytes() and s.rule == t.rule == "Adam"


def test_chain_applies_transforms_in_order():
    rng = np.random.default_rng(12)
    g = rng.standard_normal(20) * 3
    g[3] = np.nan
    rule = portopt.chain(portopt.ClipByValue(1.0), portopt.chain(portopt.ClipByGlobalNorm(2.0), portopt.SGD(lr=1.0)))
    assert len(rule.transforms) == 2
    new, _ = rule.update(np.zeros(20), np.where(np.isnan(g), 0.0, g), rule.init(np.zeros(20)))
    by_value = np.clip(np.where(np.isnan(g), 0.0, g), -1.0, 1.0)
    assert new.tobytes() == (np.zeros(20) - portopt.clip_by_global_norm(by_value, 2.0)[0]).tobytes()
    nan_kept, _ = portopt.chain(portopt.ClipByValue(1.0), portopt.SGD(lr=1.0)).update(np.zeros(20), g,
                                                                                       rule.init(np.zeros(20)))
    assert np.isnan(nan_kept[3])
    with pytest.raises(TypeError, match=r"transforms\[0\]"):
        portopt.chain(3, portopt.SGD())
    with pytest.raises(ValueError, match="limit"):
        portopt.ClipByValue(-1.0)


def test_partition_step_refuses_params_shared_across_parts_and_copies_aliasing_grads():
    base = np.ones(4)
    params = {"w": base[:3], "e": base[1:]}
    opt = portopt.partition({"A": portopt.SGD(lr=0.1), "B": portopt.SGD(lr=0.05)}, {"w": "A", "e": "B"})
    state = opt.init(params)
    with pytest.raises(ValueError, match=r"params\['w'\] and params\['e'\] share memory"):
        opt.step(params, {"w": np.ones(3), "e": np.ones(3)}, state)
    assert np.array_equal(base, np.ones(4)) and state.step == 0
    params = {"w": np.ones(3), "e": np.zeros(3)}
    grads = {"w": np.ones(3), "e": params["w"]}  # e's gradient is w, which part A writes
    pure, _ = opt.update(params, grads, opt.init(params))
    opt.step(params, grads, state)
    assert all(pure[k].tobytes() == params[k].tobytes() for k in params)


def test_partition_labels_must_be_distinct_part_names_and_errors_name_the_part():
    with pytest.raises(ValueError, match="would both be part"):
        portopt.partition({1: portopt.Adam(), "1": portopt.SGD()}, [1, "1"])
    with pytest.raises(ValueError, match="non-empty"):
        portopt.partition({"": portopt.Adam()}, [""])
    params = {"a": np.ones(2), "b": np.ones(2)}
    opt = portopt.partition({"A": portopt.Adam(), "B": portopt.Adam()}, {"a": "A", "b": "B"})
    with pytest.raises(ValueError, match=r"part 'B' .*params\['b'\]"):
        opt.step(params, {"a": np.ones(2), "b": np.ones(5)}, opt.init(params))


def test_multisteps_refuses_a_checkpoint_of_another_k(tmp_path):
    p = np.ones(3)
    three = portopt.MultiSteps(portopt.Adam(), 3)
    state = three.init(p)
    three.step(p, np.ones(3), state)
    portopt.save(tmp_path / "m.npz", three.state_dict(state))
    with pytest.raises(CheckpointError, match="k=3"):
        portopt.MultiSteps(portopt.Adam(), 2).load_state_dict(portopt.load(tmp_path / "m.npz"), p)
    assert portopt.MultiSteps(portopt.Adam(), np.int64(3)).k == 3


def test_clip_by_value_never_exceeds_its_limit_in_any_dtype():
    for dtype in (np.float16, np.float32, np.float64):
        g = np.array([5.0, -5.0], dtype=dtype)
        new, _ = portopt.chain(portopt.ClipByValue(0.3), portopt.SGD(lr=1.0)).update(
            np.zeros(2, dtype), g, portopt.SGD(lr=1.0).init(np.zeros(2, dtype)))
        step = np.abs(new).astype(np.float64)
        assert np.all(step <= 0.3), dtype  # never past the limit ...
        assert np.nextafter(np.abs(new[0]), dtype(1)).astype(np.float64) > 0.3, dtype  # ... and the nearest below it


@pytest.mark.parametrize("make", ["partition", "masked"])
def test_dict_key_order_does_not_move_a_parts_state_between_leaves(make):
    """A part's leaves are kept in sorted-key order, so params whose dict keys come in another
    order than at init (as under jax.jit, which sorts them) still meet their own state: two
    leaves of one shape in one part are never swapped, and the bits are those of the first order."""
    rng = np.random.default_rng(7)
    values = {"w2": rng.standard_normal(5), "w1": rng.standard_normal(5), "b": rng.standard_normal(3)}
    grads = [{k: rng.standard_normal(v.shape) for k, v in values.items()} for _ in range(4)]
    inner = portopt.Clipped(portopt.Adam(lr=0.1), max_norm=0.5)  # a whole-part sum too
    if make == "partition":
        rule = portopt.partition({"weights": inner, "bias": portopt.SGD(lr=0.1)}, {"w2": "weights", "w1": "weights",
                                                                                   "b": "bias"})
    else:
        rule = portopt.masked(inner, {"w2": True, "w1": True, "b": False})
    first, state_a = dict(values), rule.init(dict(values))
    second, state_b = dict(values), rule.init(dict(values))
    for k, g in enumerate(grads):
        first, state_a = rule.update(first, g, state_a)
        if k >= 1:  # the same leaves in another key order, from the second step on
            second = {key: second[key] for key in ("b", "w1", "w2")}
            g = {key: g[key] for key in ("b", "w1", "w2")}
        second, state_b = rule.update(second, g, state_b)
    for key in values:
        assert first[key].tobytes() == second[key].tobytes(), key


def _reversed(plan, grads):
    return [g[::-1] for g in grads]  # a view whose data pointer is its last element


@pytest.mark.parametrize("backend", ["numpy", "torch-cpu"])
@pytest.mark.parametrize("api", ["step", "update"])
def test_a_transform_that_returns_views_steps_with_the_reference_bits(api, backend):
    """A chain transform may return views (here reversed ones): the compiled step, planned for
    the contiguous gradients it was given, reads them through copies, with the reference's bits."""
    from conftest import TARGETS

    if backend not in TARGETS:
        pytest.skip(f"{backend} is not installed")
    target = TARGETS[backend]

    rng = np.random.default_rng(3)
    host = {"w": rng.standard_normal(50), "b": rng.standard_normal(7)}
    host_grads = [{k: rng.standard_normal(v.shape) for k, v in host.items()} for _ in range(3)]
    reference = portopt.chain(_reversed, portopt.Adam(lr=0.1))
    with portopt.fast_path("off"):
        expected, state = host, reference.init(host)
        for g in host_grads:
            expected, state = reference.update(expected, g, state)
    rule = portopt.chain(_reversed if backend == "numpy" else _torch_reversed, portopt.Adam(lr=0.1))
    params = {k: target.asarray(v) for k, v in host.items()}
    got_state = rule.init(params)
    for g in host_grads:
        grads = {k: target.asarray(v) for k, v in g.items()}
        if api == "step":
            rule.step(params, grads, got_state)
        else:
            params, got_state = rule.update(params, grads, got_state)
    for k in host:
        assert target.to_numpy(params[k]).tobytes() == expected[k].tobytes(), k


def _torch_reversed(plan, grads):
    return [_torch_flip_view(g) for g in grads]


def _torch_flip_view(g):
    # torch has no negative strides: a view with the reversed values is a strided view of a
    # reversed copy's double-length buffer, which is what "not contiguous" needs here
    import torch

    doubled = torch.empty(2 * g.shape[0], dtype=g.dtype)
    doubled[::2] = g.flip(0)
    return doubled[::2]


@pytest.mark.parametrize(("transform", "error", "match"), [
    (lambda plan, grads: [g.astype(np.float32) for g in grads], ValueError, r"grads\['b'\] as ndarray of shape \(7,\), dtype float32"),
    (lambda plan, grads: [g[:2] for g in grads], ValueError, r"must keep each gradient's shape, dtype and device"),
    (lambda plan, grads: grads[:1], TypeError, "must return a list of 2 gradient leaves"),
    (lambda plan, grads: None, TypeError, "must return a list of 2 gradient leaves, got NoneType"),
])
@pytest.mark.parametrize("api", ["step", "update"])
def test_a_transform_that_changes_the_gradients_is_refused_before_anything_is_written(api, transform, error, match):
    """A transform's gradients must keep each one's shape, dtype and device (the plan and the
    compiled loop were made for them): another is a clear error, and nothing is written."""
    rng = np.random.default_rng(4)
    params = {"b": rng.standard_normal(7), "w": rng.standard_normal(50)}
    before = {k: v.copy() for k, v in params.items()}
    rule = portopt.chain(transform, portopt.Adam(lr=0.1))
    state = rule.init(params)
    grads = {k: rng.standard_normal(v.shape) for k, v in params.items()}
    with pytest.raises(error, match=match):
        if api == "step":
            rule.step(params, grads, state)
        else:
            rule.update(params, grads, state)
    assert all(params[k].tobytes() == before[k].tobytes() for k in params) and state.step == 0
    assert all(not x.any() for tree in state.slots.values() for x in tree.values())


@pytest.mark.parametrize("api_steps", [1, 3])
def test_a_transform_that_returns_params_as_gradients_steps_as_update_does(api_steps):
    """A transform may hand back arrays the step writes (here the params, swapped): an in-place
    step reads them as update does, through copies, and not half-written by its own loop."""
    params = {"a": np.arange(5.0), "b": np.arange(5.0) * 2}
    box = {}

    def swapped(plan, grads):
        return [box["params"]["b"], box["params"]["a"]]

    rule = portopt.chain(swapped, portopt.SGD(lr=0.5, momentum=0.9))
    expected, state = {k: v.copy() for k, v in params.items()}, rule.init(params)
    for _ in range(api_steps):
        box["params"] = expected
        expected, state = rule.update(expected, {k: np.ones(5) for k in params}, state)
    in_place = rule.init(params)
    box["params"] = params
    for _ in range(api_steps):
        rule.step(params, {k: np.ones(5) for k in params}, in_place)
    assert all(params[k].tobytes() == expected[k].tobytes() for k in params)
