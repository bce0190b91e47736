"""Deterministic global-norm clipping; host-side schedules against torch's LR schedulers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import portopt
from conftest import TARGETS
from helpers import same_bits
from portopt import schedules
from portopt.kernels import cpu as compiled
from portopt.reductions import pairwise_sum


def _tree(seed, dtype="float32"):
    rng = np.random.default_rng(seed)
    return {"w": rng.standard_normal((257, 13)).astype(dtype), "b": [rng.standard_normal(1001).astype(dtype),
                                                                     np.zeros(0, dtype), np.array(3.0, dtype)]}


def test_pairwise_sum_follows_the_documented_order(numpy_target):
    x = np.array([1e8, 1.0, -1e8, 1.0, 0.5], np.float32)
    # ((1e8 + 1) + (-1e8 + 1)) + 0.5, each addition rounded in float32
    a, b = np.float32(1e8) + np.float32(1.0), np.float32(-1e8) + np.float32(1.0)
    assert float(pairwise_sum(numpy_target.xp, [x], np.float32)) == float((a + b) + np.float32(0.5))
    assert float(pairwise_sum(numpy_target.xp, [np.zeros(0, np.float32)], np.float32)) == 0.0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_global_norm_has_the_same_bits_on_every_backend(dtype):
    for seed in range(5):
        tree = _tree(seed, dtype)
        norms = {name: float(t.to_numpy(portopt.global_norm(portopt.tree_map(t.asarray, tree))))
                 for name, t in TARGETS.items() if dtype in t.dtypes}
        assert len(set(norms.values())) == 1, norms
        exact = math.sqrt(sum(float(v) ** 2 for leaf in portopt.flatten(tree)[0] for v in np.ravel(leaf)))
        assert abs(next(iter(norms.values())) - exact) <= 1e-5 * exact


def test_clip_by_global_norm_scales_like_torch_and_agrees_across_backends():
    torch = pytest.importorskip("torch", reason="torch is not installed")
    tree = _tree(1, "float64")
    clipped, norm = portopt.clip_by_global_norm(tree, 5.0)
    assert float(norm) > 5.0
    assert abs(float(portopt.global_norm(clipped)) - 5.0) < 1e-5
    tensors = [torch.from_numpy(x.copy()) for x in portopt.flatten(tree)[0]]
    for t in tensors:
        t.grad = t.clone()
    torch.nn.utils.clip_grad_norm_(tensors, 5.0)
    for ours, theirs in zip(portopt.flatten(clipped)[0], tensors):
        np.testing.assert_allclose(ours, theirs.grad.numpy(), rtol=1e-12)
    on_torch, _ = portopt.clip_by_global_norm(portopt.tree_map(torch.from_numpy, tree), 5.0)
    assert all(same_bits(a, b.numpy()) for a, b in zip(portopt.flatten(clipped)[0], portopt.flatten(on_torch)[0]))
    small, _ = portopt.clip_by_global_norm(tree, 1e6)  # below the bound: unchanged
    assert all(same_bits(a, b) for a, b in zip(portopt.flatten(small)[0], portopt.flatten(tree)[0]))


def test_clipped_rule_checks_grads_first_and_keeps_the_state_format():
    rule = portopt.Clipped(portopt.Adam(lr=0.1), max_norm=1.0)
    params = [np.ones(3)]
    state = rule.init(params)
    assert state.rule == "Adam"
    with pytest.raises(ValueError, match=r"grads\[0\] has shape"):
        rule.step(params, [np.ones(4)], state)
    rule.step(params, [np.full(3, 100.0)], state)
    expected = [np.ones(3)]
    plain = portopt.Adam(lr=0.1)
    plain.step(expected, [np.full(3, 100.0) / (np.sqrt(30000.0) + 1e-6)], plain.init(expected))
    assert same_bits(params[0], expected[0])
    with pytest.raises(ValueError, match="max_norm must be >= 0"):
        portopt.Clipped(portopt.Adam(), -1.0)


def test_schedules_match_torch_lr_schedulers():
    torch = pytest.importorskip("torch", reason="torch is not installed")

    def torch_values(make, steps=60):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
        scheduler = make(optimizer)
        values = []
        for _ in range(steps):
            values.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return values

    pairs = [  # (ours, torch's, steps compared: CosineAnnealingLR rises again after its period)
        (schedules.step_decay(0.1, 0.5, 7), lambda o: torch.optim.lr_scheduler.StepLR(o, 7, 0.5), 60),
        (schedules.exponential_decay(0.1, 0.9), lambda o: torch.optim.lr_scheduler.ExponentialLR(o, 0.9), 60),
        (schedules.cosine_decay(0.1, 40, final=0.001),
         lambda o: torch.optim.lr_scheduler.CosineAnnealingLR(o, 40, eta_min=0.001), 41),
    ]
    for ours, make, limit in pairs:
        theirs = torch_values(make)
        for t in range(limit):
            assert abs(ours(t) - theirs[t]) <= 1e-12 * max(abs(theirs[t]), 1e-30), (t, ours(t), theirs[t])


def test_warmup_then_cosine():
    schedule = schedules.warmup_cosine(peak=1.0, warmup_steps=10, decay_steps=20, final=0.0)
    values = [schedule(t) for t in range(40)]
    assert values[0] == 0.1 and values[9] == 1.0 and values[10] == 1.0
    assert values[20] == pytest.approx(0.5, abs=1e-15) and values[30] == 0.0 and values[39] == 0.0
    assert all(a >= b for a, b in zip(values[9:], values[10:]))
    with pytest.raises(ValueError, match="decay_steps must be an int >= 1"):
        schedules.cosine_decay(1.0, 0)


def test_beta1_at_or_above_sqrt_beta2_warns_once_per_call():
    with pytest.warns(portopt.DivergenceWarning, match=r"beta1 = 0.99 >= sqrt\(beta2\)"):
        portopt.Adam(betas=(0.99, 0.9))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        portopt.Adam(betas=(0.9, 0.999))
        portopt.Lion(betas=(0.99, 0.9))  # Lion's betas mean something else: no warning


@pytest.mark.skipif(not compiled.available(), reason="numba is not installed")
@settings(max_examples=40)
@given(sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=6), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from(["float32", "float64"]))
def test_compiled_norm_is_the_fixed_order_tree(sizes, seed, dtype):
    """The one-pass compiled sum of squares (a stack of partial sums) adds what the
    level-by-level definition adds, in its order: the same bits for any sizes."""
    import array_api_compat.numpy as xp

    from portopt.fast.norms import sum_of_squares
    from portopt.reductions import pairwise_sum_of_squares

    rng = np.random.default_rng(seed)
    leaves = [(rng.standard_normal(n) * 2.0 ** rng.integers(-40, 40, n)).astype(dtype) for n in sizes]
    with portopt.fast_path("compiled"):
        fast = np.asarray(sum_of_squares(xp, leaves, np.dtype(dtype)))
    reference = np.asarray(pairwise_sum_of_squares(xp, leaves, np.dtype(dtype)))
    assert fast.tobytes() == reference.tobytes()


def _torch_grads(shapes, dtype, seed, scale=3.0):
    torch = pytest.importorskip("torch")
    generator = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.nn.Parameter(torch.zeros(shape, dtype=dtype))
        p.grad = (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype)
        params.append(p)
    return params


@pytest.mark.parametrize("dtype_name", ["float32", "float64", "float16", "mixed"])
@pytest.mark.parametrize("max_norm", [0.5, 1e9])  # scales / within the bound
def test_torch_clip_grad_norm_lane_gives_the_reference_paths_bits(dtype_name, max_norm):
    """The whole-CPU-tensor lane of portopt.torch.clip_grad_norm_ (the compiled loop straight
    from data_ptr) against the array implementation (fast path off), on shapes that take the
    lane, shapes that do not (a strided view) and sizes that split between threads."""
    torch = pytest.importorskip("torch")
    import portopt.torch as pt
    from portopt.kernels import cpu as compiled

    dtypes = {"float32": [torch.float32], "float64": [torch.float64], "float16": [torch.float16],
              "mixed": [torch.float32, torch.float64]}[dtype_name]
    shapes = [(), (0,), (1,), (257,), (16, 24), (compiled.PARALLEL_THRESHOLD // 2 + 3,), (64, 64)]
    results = []
    for mode in ("auto", "off"):
        params = _torch_grads(shapes, dtypes[0], 7)
        if len(dtypes) > 1:  # one float64 tensor among float32 ones: a float64 norm, the general path
            params[2:3] = _torch_grads([shapes[2]], dtypes[1], 9)
        with portopt.fast_path(mode):
            from portopt.torch_clipping import _whole_cpu_norm

            lane = _whole_cpu_norm([p.grad for p in params]) is not None
            assert lane == (mode == "auto" and dtype_name in ("float32", "float64") and compiled.available())
            norm = pt.global_grad_norm(params)
            returned = pt.clip_grad_norm_(params, max_norm)
        results.append((norm.numpy().tobytes(), returned.numpy().tobytes(),
                        [p.grad.numpy().tobytes() for p in params]))
    assert results[0] == results[1]
    strided = _torch_grads([(40,)], torch.float32, 8)
    strided[0].grad = torch.randn(80)[::2]  # not contiguous: the general path
    with portopt.fast_path("off"):
        expected = pt.global_grad_norm(strided).numpy().tobytes()
    assert pt.global_grad_norm(strided).numpy().tobytes() == expected


def _clip_trees():
    rng = np.random.default_rng(11)
    return {
        "float32": {"w": rng.standard_normal((16, 24)).astype(np.float32) * 4, "b": np.float32(3.0) * np.ones(5, np.float32),
                    "scalar": np.asarray(2.5, np.float32), "empty": np.zeros(0, np.float32)},
        "mixed": [rng.standard_normal(30).astype(np.float32), rng.standard_normal(7) * 9.0],
        "float16": [rng.standard_normal(40).astype(np.float16) * 8],
    }


@pytest.mark.parametrize("kind", list(_clip_trees()))
@pytest.mark.parametrize("max_norm", [0.5, 1e9])
@pytest.mark.parametrize("backend", ["numpy", "torch", "array_api_strict"])
def test_clip_by_global_norm_in_place_gives_the_pure_forms_bits(kind, max_norm, backend):
    tree = _clip_trees()[kind]
    pure, pure_norm = portopt.clip_by_global_norm(tree, max_norm)
    if backend == "numpy":
        convert, back = (lambda x: np.array(x, copy=True)), np.asarray
    elif backend == "torch":
        torch = pytest.importorskip("torch")
        convert, back = (lambda x: torch.from_numpy(np.array(x, copy=True))), (lambda x: x.numpy())
    else:
        strict = pytest.importorskip("array_api_strict")
        if kind == "float16":
            pytest.skip("array-api-strict has no float16")
        convert, back = (lambda x: strict.asarray(np.array(x, copy=True))), (lambda x: np.asarray(x))
    grads = portopt.tree_map(convert, tree)
    norm = portopt.clip_by_global_norm_(grads, max_norm)
    assert back(norm).tobytes() == np.asarray(pure_norm).tobytes()
    for ours, want in zip(portopt.flatten(grads)[0], portopt.flatten(pure)[0]):
        assert back(ours).dtype == np.asarray(want).dtype and back(ours).tobytes() == np.asarray(want).tobytes()


def test_clip_by_global_norm_in_place_refuses_what_it_cannot_write_and_writes_nothing():
    a = np.full(4, 10.0)
    readonly = np.full(3, 10.0)
    readonly.flags.writeable = False
    for grads, error, match in (([a, readonly], TypeError, r"grads\[1\] is read-only"),
                                ([a, a], ValueError, r"grads\[0\] and grads\[1\] share memory"),
                                ([a, np.broadcast_to(np.ones(1), (3,))], (TypeError, ValueError), r"grads\[1\]"),
                                ([a], ValueError, "max_norm")):
        with pytest.raises(error, match=match):
            portopt.clip_by_global_norm_(grads, -1.0 if match == "max_norm" else 1.0)
        assert np.array_equal(a, np.full(4, 10.0)), "nothing was written"
