"""Lion, AdaBound and SignSGD (no torch.optim peer) against the papers' formulas, written out
independently here in plain Python floats, element by element, over 100 float64 steps."""

from __future__ import annotations

import math

import numpy as np
import pytest

import portopt
from helpers import random_arrays

STEPS = 100


def _sign(x):
    return 1.0 if x > 0 else -1.0 if x < 0 else 0.0


def lion_reference(p, grads, lr, b1, b2, wd):
    """Chen et al. (2023), Algorithm 2."""
    p, m = [float(x) for x in p], [0.0] * len(p)
    for g in grads:
        for i, gi in enumerate(g.tolist()):
            c = b1 * m[i] + (1 - b1) * gi
            p[i] = p[i] * (1 - lr * wd) - lr * _sign(c)
            m[i] = b2 * m[i] + (1 - b2) * gi
    return np.array(p)


def adabound_reference(p, grads, lr, b1, b2, final_lr, gamma, eps, amsbound):
    """Luo et al. (2019), Algorithm 2 (AdaBound) / 3 (AMSBound), reference implementation's bias correction."""
    p, m, v, vmax = list(p), [0.0] * len(p), [0.0] * len(p), [0.0] * len(p)
    for t, g in enumerate(grads, 1):
        step = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
        lower, upper = final_lr * (1 - 1 / (gamma * t + 1)), final_lr * (1 + 1 / (gamma * t))
        for i, gi in enumerate(g):
            m[i] = b1 * m[i] + (1 - b1) * gi
            v[i] = b2 * v[i] + (1 - b2) * gi * gi
            vmax[i] = max(vmax[i], v[i])
            eta = min(max(step / (math.sqrt(vmax[i] if amsbound else v[i]) + eps), lower), upper)
            p[i] -= eta * m[i]
    return np.array(p)


def signum_reference(p, grads, lr, momentum):
    """Bernstein et al. (2018), Algorithm 1 (SignSGD) and 3 (Signum)."""
    p, m = [float(x) for x in p], [0.0] * len(p)
    for g in grads:
        for i, gi in enumerate(g.tolist()):
            m[i] = momentum * m[i] + (1 - momentum) * gi if momentum else gi
            p[i] -= lr * _sign(m[i])
    return np.array(p)


def adagradnorm_reference(p, grads, lr, b0_squared, eps):
    """Ward, Wu & Bottou (2018), AdaGrad-Norm: one b for all coordinates."""
    p, b2 = [float(x) for x in p], b0_squared
    for g in grads:
        g = g.tolist()
        b2 += math.fsum(x * x for x in g)
        p = [pi - lr * gi / (math.sqrt(b2) + eps) for pi, gi in zip(p, g)]
    return np.array(p)


CASES = [
    (portopt.AdaGradNorm(lr=0.5, initial_accumulator_value=0.1),
     lambda p, g: adagradnorm_reference(p, g, 0.5, 0.1, 1e-10)),
    (portopt.Lion(lr=0.01, betas=(0.9, 0.99), weight_decay=0.1), lambda p, g: lion_reference(p, g, 0.01, 0.9, 0.99, 0.1)),
    (portopt.AdaBound(lr=0.01, final_lr=0.05), lambda p, g: adabound_reference(p, g, 0.01, 0.9, 0.999, 0.05, 1e-3, 1e-8, False)),
    (portopt.AdaBound(amsbound=True), lambda p, g: adabound_reference(p, g, 1e-3, 0.9, 0.999, 0.1, 1e-3, 1e-8, True)),
    (portopt.SignSGD(lr=0.01), lambda p, g: signum_reference(p, g, 0.01, 0.0)),
    (portopt.SignSGD(lr=0.01, momentum=0.9), lambda p, g: signum_reference(p, g, 0.01, 0.9)),
]


@pytest.mark.parametrize("rule, reference", CASES, ids=[repr(r) for r, _ in CASES])
def test_matches_the_papers_formula(rule, reference):
    p0 = random_arrays(11, (32,), "float64", 1)[0]
    grads = random_arrays(12, (32,), "float64", STEPS)
    params = p0.copy()
    state = rule.init(params)
    for g in grads:
        rule.step(params, g, state)
    expected = reference(p0, grads)
    assert np.max(np.abs(params - expected) / np.maximum(np.abs(expected), 1e-300)) < 1e-9
    assert np.max(np.abs(params - p0)) > 1e-3  # it moved


def test_sign_keeps_signed_zero_and_nan():
    rule = portopt.SignSGD(lr=1.0)
    params = np.zeros(4)
    rule.step(params, np.array([0.0, -0.0, np.nan, -3.0]), rule.init(params))
    assert params[0] == 0 and params[1] == 0 and np.isnan(params[2]) and params[3] == 1.0


def test_sgd_nesterov_needs_momentum_and_no_dampening():
    with pytest.raises(ValueError, match="nesterov requires momentum > 0 and dampening = 0"):
        portopt.SGD(nesterov=True)
    with pytest.raises(ValueError, match="nesterov requires"):
        portopt.SGD(momentum=0.9, dampening=0.1, nesterov=True)
