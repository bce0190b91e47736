"""portopt.minimize and portopt.scipy_method: known answers, bounds, stopping, bits across backends."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest

import portopt

scipy_optimize = pytest.importorskip("scipy.optimize", reason="scipy is not installed (the scipy extra)")


def least_squares(A: np.ndarray, b: np.ndarray):
    """``f = |Ax - b|²`` and its gradient ``2 Aᵀ(Ax - b)``."""
    def fun(x):
        r = A @ x - b
        return float(r @ r), 2.0 * (A.T @ r)
    return fun


def elementwise(xp, centre, weight):
    """``f = Σ w (x - c)²``, gradient ``2 w (x - c)``: elementwise, so every backend's own
    arithmetic gives the same gradient bits too."""
    def fun(x):
        d = x - centre
        return xp.sum(weight * d * d), (weight + weight) * d
    return fun


def test_least_squares_reaches_the_closed_form():
    rng = np.random.default_rng(0)
    A, b = rng.standard_normal((20, 5)), rng.standard_normal(20)
    x0 = np.zeros(5)
    result = portopt.minimize(least_squares(A, b), x0, portopt.Adam(lr=0.05), maxiter=20000, tol=1e-9)
    expected = np.linalg.lstsq(A, b, rcond=None)[0]
    assert result.success and result.status == 0, result.message
    assert result.nit < 20000 and result.nfev == result.nit + 1
    np.testing.assert_allclose(result.x, expected, rtol=0, atol=1e-8)
    assert np.max(np.abs(result.jac)) <= 1e-9
    assert result.fun == pytest.approx(least_squares(A, b)(expected)[0], abs=1e-12)
    assert np.array_equal(x0, np.zeros(5)), "x0 must not be modified"
    assert result.state.step == result.nit


def test_maxiter_is_honoured_and_reported():
    fun = least_squares(np.eye(3), np.ones(3))
    result = portopt.minimize(fun, np.zeros(3), "sgd", options={"lr": 1e-4}, maxiter=7)
    assert (result.nit, result.nfev, result.status, result.success) == (7, 8, 1, False)
    assert result.fun == fun(result.x)[0]


def _targets():
    from portopt.conformance.targets import find_targets

    found, _ = find_targets(("numpy", "torch-cpu", "jax"))  # jax: eager, through portopt.jax.eager_update
    return found


def test_the_same_problem_gives_the_same_bits_on_every_backend():
    rng = np.random.default_rng(1)
    centre, weight = rng.standard_normal(50), rng.uniform(0.5, 2.0, 50)
    x0 = rng.standard_normal(50)
    results = {}
    for name, target in _targets().items():
        xp = target.xp
        fun = elementwise(xp, target.asarray(centre), target.asarray(weight))
        result = portopt.minimize(fun, target.asarray(x0), portopt.AMSGrad(lr=0.01), maxiter=300,
                                  bounds=[(-0.5, 0.5)] * 50)
        results[name] = (target.to_numpy(result.x).tobytes(), result.nit)
        assert type(result.x) is type(target.asarray(x0)), name
    assert len(results) >= 2, f"only {list(results)} installed"
    assert len(set(results.values())) == 1, {k: v[1] for k, v in results.items()}


def test_reddi_counterexample_through_minimize_matches_the_hand_loop():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
    import reddi_counterexample as reddi

    paths = reddi.trajectories(steps=600)
    assert paths["Adam"][-1] > 0.9 and paths["AMSGrad"][-1] < -0.9  # Adam to the worst point, AMSGrad to -1
    c, betas = 3.0, (0.0, 1.0 / 10.0)
    for name, cls in (("Adam", portopt.Adam), ("AMSGrad", portopt.AMSGrad)):
        x = np.array([0.0])
        rule = cls(lr=lambda t: 0.5 / math.sqrt(t + 1), betas=betas)
        state = rule.init(x)
        for t in range(1, 601):  # the loop the example used to hand-write
            rule.step(x, np.array([c if t % 3 == 1 else -1.0]), state)
            np.clip(x, -1.0, 1.0, out=x)
        assert x.tobytes() == np.array([paths[name][-1]]).tobytes(), name


def test_scipy_round_trip_gives_portopt_minimize_bits():
    rng = np.random.default_rng(2)
    A, b = rng.standard_normal((8, 3)), rng.standard_normal(8)
    seen = []
    ours = portopt.minimize(least_squares(A, b), np.zeros(3), portopt.RMSProp(lr=0.01), maxiter=500,
                            bounds=[(None, 0.2), (-1, 1), (None, None)])
    theirs = scipy_optimize.minimize(least_squares(A, b), np.zeros(3), jac=True,
                                     method=portopt.scipy_method("RMSProp", lr=0.01), options={"maxiter": 500},
                                     bounds=[(None, 0.2), (-1, 1), (None, None)], callback=seen.append)
    assert isinstance(theirs, scipy_optimize.OptimizeResult)
    assert theirs.x.tobytes() == ours.x.tobytes() and theirs.nit == ours.nit == 500 == len(seen)
    assert theirs.x[0] <= 0.2
    converged = scipy_optimize.minimize(least_squares(A, b), np.zeros(3), jac=True, tol=1e-8,
                                        method=portopt.scipy_method(portopt.Adam(lr=0.02)),
                                        options={"maxiter": 100000})
    assert converged.success and converged.nit < 100000
    with pytest.raises(TypeError, match="options.*frobnicate"):
        scipy_optimize.minimize(least_squares(A, b), np.zeros(3), jac=True, method=portopt.scipy_method("adam"),
                                options={"frobnicate": 1})
    with pytest.raises(ValueError, match="constraints"):
        scipy_optimize.minimize(least_squares(A, b), np.zeros(3), jac=True, method=portopt.scipy_method("adam"),
                                constraints=[{"type": "eq", "fun": lambda x: x[0]}])


def test_callback_stops_the_run_and_nit_counts_the_steps():
    fun = least_squares(np.eye(2), np.ones(2))
    calls = []

    def stop_at_five(xk):
        calls.append(xk.copy())
        return len(calls) == 5

    result = portopt.minimize(fun, np.zeros(2), "adam", maxiter=100, callback=stop_at_five)
    assert (result.nit, result.status, result.success) == (5, 99, False)
    assert calls[-1].tobytes() == result.x.tobytes() and calls[0].tobytes() != calls[1].tobytes()

    def raising(intermediate_result):
        assert intermediate_result.fun == fun(intermediate_result.x)[0]
        raise StopIteration

    assert portopt.minimize(fun, np.zeros(2), "adam", callback=raising).nit == 1


def test_bounds_forms_agree_and_round_towards_the_box():
    fun = elementwise(np, np.full(3, 5.0, dtype=np.float32), np.ones(3, dtype=np.float32))
    x0 = np.zeros(3, dtype=np.float32)
    pairs = portopt.minimize(fun, x0, "adam", options={"lr": 0.1}, maxiter=200, bounds=[(None, 0.1)] * 3)
    box = portopt.minimize(fun, x0, "adam", options={"lr": 0.1}, maxiter=200,
                           bounds=scipy_optimize.Bounds(-np.inf, 0.1))
    assert pairs.x.tobytes() == box.x.tobytes()
    assert np.all(pairs.x.astype(np.float64) <= 0.1)  # float32(0.1) > 0.1: the bound was rounded down
    assert pairs.x[0] == np.nextafter(np.float32(0.1), np.float32(0))
    start = portopt.minimize(fun, np.full(3, 9.0), "adam", maxiter=0, bounds=[(0, 1)] * 3)
    assert np.array_equal(start.x, np.ones(3)), "x0 is projected onto the bounds"


def test_a_tree_x0_with_bounds_over_all_its_elements():
    x0 = {"a": np.zeros(2), "b": [np.zeros((2, 2))]}

    def fun(x):
        return 0.0, {"a": x["a"] - 3.0, "b": [x["b"][0] + 3.0]}

    result = portopt.minimize(fun, x0, "adam", options={"lr": 0.5}, maxiter=100, bounds=[(-1, 1)] * 6)
    assert np.array_equal(result.x["a"], np.ones(2)) and np.array_equal(result.x["b"][0], -np.ones((2, 2)))


def test_a_list_of_numbers_is_a_float64_array():
    result = portopt.minimize(lambda x: (float(x @ x), 2 * x), [1.0, 2.0], "adam", maxiter=3)
    assert isinstance(result.x, np.ndarray) and result.x.dtype == np.float64


def test_torch_autograd_when_jac_is_none():
    torch = pytest.importorskip("torch")
    target = torch.tensor([3.0, -2.0], dtype=torch.float64)
    result = portopt.minimize(lambda x: ((x - target) ** 2).sum(), torch.zeros(2, dtype=torch.float64),
                              portopt.Adam(lr=0.1), jac=None, maxiter=5000, tol=1e-10)
    assert result.success and torch.allclose(result.x, target, atol=1e-9) and not result.x.requires_grad


def test_automatic_differentiation_gives_the_hand_written_gradients_bits():
    """jac=None with torch autograd and with jax.value_and_grad, against NumPy with the gradient
    written out: d/dx (x - c)² is 2 (x - c) times 1 on every library here, exact after the
    rounded x - c, so every run gives the same bits (the rules' own bits do the rest)."""
    rng = np.random.default_rng(3)
    centre, x0 = rng.standard_normal(20), rng.standard_normal(20)
    expected = portopt.minimize(lambda x: (float(np.sum((x - centre) ** 2)), 2.0 * (x - centre)), x0,
                                portopt.NAdam(lr=0.05), maxiter=200, bounds=[(-0.5, 0.5)] * 20)
    runs = 0
    for name, target in _targets().items():
        if name == "numpy":
            continue
        c = target.asarray(centre)
        result = portopt.minimize(lambda x: ((x - c) ** 2).sum(), target.asarray(x0), portopt.NAdam(lr=0.05),  # noqa: B023
                                  jac=None, maxiter=200, bounds=[(-0.5, 0.5)] * 20)
        assert target.to_numpy(result.x).tobytes() == expected.x.tobytes(), name
        assert target.to_numpy(result.jac).tobytes() == expected.jac.tobytes(), name
        assert result.nit == expected.nit == 200 and result.fun == pytest.approx(expected.fun, rel=1e-12)
        runs += 1
    if not runs:
        pytest.skip("neither torch nor jax is installed")


def test_non_finite_values_stop_with_a_reason():
    result = portopt.minimize(lambda x: (float("nan"), x), np.ones(2), "adam")
    assert (result.status, result.nit) == (3, 0) and "not finite" in result.message


@pytest.mark.parametrize(("call", "error", "match"), [
    (dict(method="nope"), ValueError, "method 'nope'.*Adam"),
    (dict(method=portopt.Adam(), options={"lr": 1.0}), TypeError, "constructed rule"),
    (dict(maxiter=-1), ValueError, "maxiter"),
    (dict(tol=-1.0), ValueError, "tol"),
    (dict(callback=3), TypeError, "callback"),
    (dict(jac=None), ValueError, "jac"),
    (dict(jac="2-point"), TypeError, "jac"),
    (dict(bounds=[(0, 1)]), ValueError, "bounds has 1"),
    (dict(bounds=[(2, 1), (0, 1)]), ValueError, "bounds: element 0"),
    (dict(bounds=[(0, "x"), (0, 1)]), TypeError, r"bounds\[0\]\[1\]"),
    (dict(progress="yes"), TypeError, "progress"),
])
def test_bad_input_names_the_argument(call, error, match):
    with pytest.raises(error, match=match):
        portopt.minimize(lambda x: (0.0, x), np.zeros(2), **{"method": "adam", **call})


def test_progress_bar_only_when_asked_or_interactive(capsys):
    fun = least_squares(np.eye(2), np.ones(2))
    portopt.minimize(fun, np.zeros(2), "adam", maxiter=2000)
    assert capsys.readouterr().err == ""  # not a terminal: no bar by default
    pytest.importorskip("tqdm")
    portopt.minimize(fun, np.zeros(2), "adam", maxiter=50, progress=True)
    assert "portopt.minimize" in capsys.readouterr().err


def test_infinite_bounds_are_no_bounds_for_the_tolerance():
    """x - (x - g) rounds to 0 at x = 1e8 in float32: the test must read g itself, not that."""
    fun = lambda x: (float(x[0]), np.ones(1, np.float32))  # noqa: E731
    for bounds in (None, [(None, None)], [(-1e9, 1e9)]):
        result = portopt.minimize(fun, np.array([1e8], np.float32), "sgd", options={"lr": 1e-3}, maxiter=10,
                                  tol=1e-3, bounds=bounds)
        assert (result.status, result.nit) == (1, 10), bounds


def test_bounds_without_a_value_of_the_dtype_are_refused():
    with pytest.raises(ValueError, match="element 0.*holds no float32 value"):
        portopt.minimize(lambda x: (0.0, x), np.zeros(1, np.float32), "adam", bounds=[(0.1, 0.1)])
    with pytest.raises(ValueError, match="holds no float16 value"):
        portopt.minimize(lambda x: (0.0, x), np.zeros(1, np.float16), "adam", bounds=[(1e5, 2e5)])


def test_scipy_forms_of_options_bounds_and_callbacks():
    fun = least_squares(np.eye(2), np.ones(2))
    pairs = np.array([[0.0, 0.5], [-1.0, 1.0]])
    result = scipy_optimize.minimize(fun, np.zeros(2), jac=True, method=portopt.scipy_method("adam"),
                                     bounds=pairs, tol=np.float32(1e-3), options={"disp": 0, "maxiter": 5})
    assert result.nit == 5 and result.x[0] <= 0.5
    stop = portopt.minimize(fun, np.zeros(2), "adam", callback=lambda x: np.bool_(True))
    assert (stop.nit, stop.status) == (1, 99)
    with pytest.raises(ValueError, match="the gradient"):
        portopt.minimize(lambda x: (0.0, {"x": x}), np.zeros(2), "adam")
