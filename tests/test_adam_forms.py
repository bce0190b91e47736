"""The two Adam forms torch.optim lacks, against formulas written out here independently.

``bias_correction=False`` (BERT's Adam; HF ``correct_bias=False``, apex ``bias_correction=False``):
``p -= lr · m / (√v + ε)``. ``eps_hat=True`` (Kingma & Ba §2's ε̂; Keras and TensorFlow):
``p -= lr·√(1−β2^t)/(1−β1^t) · m / (√v + ε̂)``. The reference below is NumPy elementwise in
the compute dtype, its host scalars from exact rational powers rounded once, so each result must
match portopt's bit for bit, through ``update`` and the in-place ``step`` (the fast paths).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

import portopt
from helpers import random_arrays, same_bits

STEPS = 30


def _power(beta: float, t: int) -> float:
    """β^t rounded once to the nearest float64 (exact rational arithmetic)."""
    return float(Fraction(beta) ** t)


def reference(p: np.ndarray, grads: list[np.ndarray], *, lr: float, betas: tuple[float, float], eps: float,
              weight_decay: float, decoupled: bool, amsgrad: bool, form: str) -> np.ndarray:
    """Adam written out: ``form`` is "torch" (ε added to √v̂), "eps_hat" or "no_bias_correction"."""
    b1, b2 = betas
    dtype = p.dtype.type
    m, v, v_max = np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if weight_decay and not decoupled:
            g = g + dtype(weight_decay) * p
        if weight_decay and decoupled:
            p = p * dtype(1.0 - lr * weight_decay)
        m = dtype(b1) * m + dtype(1.0 - b1) * g
        v = dtype(b2) * v + dtype(1.0 - b2) * (g * g)
        if amsgrad:
            v_max = np.maximum(v_max, v)
        second = v_max if amsgrad else v
        if form == "torch":
            step_size = lr / (1.0 - _power(b1, t))
            denominator = np.sqrt(second) / dtype(math.sqrt(1.0 - _power(b2, t))) + dtype(eps)
        elif form == "eps_hat":
            step_size = lr * math.sqrt(1.0 - _power(b2, t)) / (1.0 - _power(b1, t))
            denominator = np.sqrt(second) + dtype(eps)
        else:
            step_size = lr
            denominator = np.sqrt(second) + dtype(eps)
        p = p - dtype(step_size) * (m / denominator)
    return p


FORMS = {"torch": {}, "eps_hat": {"eps_hat": True}, "no_bias_correction": {"bias_correction": False},
         "both": {"eps_hat": True, "bias_correction": False}}
SETTINGS = [
    ("Adam", {"lr": 0.01, "eps": 1e-7}, False),
    ("Adam", {"lr": 0.003, "weight_decay": 0.1, "betas": (0.8, 0.99)}, False),
    ("AdamW", {"lr": 0.001, "eps": 1e-6, "weight_decay": 0.01}, True),
    ("AMSGrad", {"lr": 0.01, "betas": (0.9, 0.95)}, False),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize(("name", "options", "decoupled"), SETTINGS, ids=[s[0] + str(i) for i, s in enumerate(SETTINGS)])
def test_each_form_matches_its_formula_bit_for_bit(name, options, decoupled, form, dtype):
    rule = getattr(portopt, name)(**options, **FORMS[form])
    p0 = random_arrays(7, (97,), dtype, 1)[0]
    grads = random_arrays(8, (97,), dtype, STEPS)
    expected = reference(p0, grads, lr=options["lr"], betas=options.get("betas", (0.9, 0.999)),
                         eps=options.get("eps", 1e-8), weight_decay=options.get("weight_decay", 0.0),
                         decoupled=decoupled, amsgrad=name == "AMSGrad",
                         form={"both": "no_bias_correction"}.get(form, form))
    pure, state = p0.copy(), rule.init(p0)
    in_place, state_in_place = p0.copy(), rule.init(p0)
    for g in grads:
        pure, state = rule.update(pure, g, state)
        rule.step(in_place, g, state_in_place)
    assert same_bits(pure, expected) and same_bits(in_place, expected)


def test_the_forms_are_different_steps():
    """A guard on the test above: the three forms give three different trajectories."""
    p0, grads = random_arrays(1, (33,), "float64", 1)[0], random_arrays(2, (33,), "float64", 5)
    finals = []
    for form in ("torch", "eps_hat", "no_bias_correction"):
        rule, params = portopt.Adam(lr=0.01, eps=1e-3, **FORMS[form]), p0.copy()
        state = rule.init(params)
        for g in grads:
            rule.step(params, g, state)
        finals.append(params.tobytes())
    assert len(set(finals)) == 3


def test_first_step_of_each_form_by_hand():
    """Step 1 from m = v = 0, g = 2, p = 1, lr = 0.1, β = (0.9, 0.999), ε = 0.5:
    torch form: m̂ = 2, v̂ = 4, p = 1 - 0.1·2/(2 + 0.5) = 0.92;
    ε̂ form: m = 0.2, √v = 2·√0.001, p = 1 - 0.1·√0.001/0.1 · 0.2/(2√0.001 + 0.5);
    no bias correction: p = 1 - 0.1 · 0.2/(2√0.001 + 0.5)."""
    root = 2.0 * math.sqrt(0.001)
    by_hand = {"torch": 1 - 0.1 * 2 / 2.5, "eps_hat": 1 - math.sqrt(0.001) * (0.2 / (root + 0.5)),
               "no_bias_correction": 1 - 0.1 * (0.2 / (root + 0.5))}
    for form, value in by_hand.items():
        rule = portopt.Adam(lr=0.1, eps=0.5, **FORMS[form])
        params = np.ones(1)
        rule.step(params, np.full(1, 2.0), rule.init(params))
        assert params[0] == pytest.approx(value, rel=1e-15), form


@pytest.mark.parametrize("name", ["bias_correction", "eps_hat"])
def test_the_options_are_flags_named_in_the_error(name):
    with pytest.raises((TypeError, ValueError), match=name):
        portopt.AdamW(**{name: "yes"})


def test_the_options_survive_a_checkpoint_and_the_hyperparameters():
    rule = portopt.AdamW(lr=0.01, bias_correction=False, eps_hat=True)
    assert rule.hyperparameters()["bias_correction"] is False and rule.hyperparameters()["eps_hat"] is True
    twin = portopt.AdamW(**rule.hyperparameters())
    params, grads = random_arrays(3, (10,), "float32", 1)[0], random_arrays(4, (10,), "float32", 4)
    a, b = params.copy(), params.copy()
    sa, sb = rule.init(a), twin.init(b)
    for g in grads:
        rule.step(a, g, sa)
        twin.step(b, g, sb)
    assert same_bits(a, b)


def _keras_adam(p: np.ndarray, grads: list[np.ndarray], lr: float, b1: float, b2: float, eps: float) -> np.ndarray:
    """Adam in Keras's own order of operations (tf.keras's optimizer_v1 and Keras 3), float64:
    ``lr_t = lr·√(1−β2^t)/(1−β1^t)``, ``m += (g − m)(1 − β1)``, ``v += (g² − v)(1 − β2)``,
    ``p −= (m·lr_t)/(√v + ε)``. Another rounding order, so another last bit: this checks the math."""
    m, v = np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        lr_t = lr * math.sqrt(1 - b2**t) / (1 - b1**t)
        m = m + (g - m) * (1 - b1)
        v = v + (np.square(g) - v) * (1 - b2)
        p = p - (m * lr_t) / (np.sqrt(v) + eps)
    return p


def test_eps_hat_is_keras_semantics():
    """Keras's Adam (its ``epsilon`` is ε̂) in its own operation order agrees with ``eps_hat=True``
    to a relative 1e-12 in float64 over 50 steps: rounding differences, not a different formula.
    With a large ε the torch form is a different formula, and this distance shows it (≫ 1e-6)."""
    p0, grads = random_arrays(5, (64,), "float64", 1)[0], random_arrays(6, (64,), "float64", 50)
    keras = _keras_adam(p0, grads, lr=0.01, b1=0.9, b2=0.999, eps=0.1)
    for form, close in (("eps_hat", True), ("torch", False)):
        rule, params = portopt.Adam(lr=0.01, eps=0.1, **FORMS[form]), p0.copy()
        state = rule.init(params)
        for g in grads:
            rule.step(params, g, state)
        distance = float(np.max(np.abs(params - keras) / np.abs(keras)))
        assert (distance < 1e-12) if close else (distance > 1e-6), (form, distance)


def test_the_drop_ins_take_the_forms_and_torch_refuses_nothing_it_lacks():
    """``portopt.torch.AdamW(params, bias_correction=False)`` as HF's ``correct_bias=False`` is
    spelled in apex: keyword-only, in the signature, the rule's bits; a wrong value names it."""
    torch = pytest.importorskip("torch")
    import inspect

    import portopt.torch as pt

    signature = inspect.signature(pt.AdamW)
    assert signature.parameters["bias_correction"].kind is inspect.Parameter.KEYWORD_ONLY
    assert signature.parameters["eps_hat"].default is False
    p0, grads = random_arrays(9, (12,), "float32", 1)[0], random_arrays(10, (12,), "float32", 3)
    param = torch.nn.Parameter(torch.from_numpy(p0.copy()))
    optimizer = pt.AdamW([param], lr=0.01, bias_correction=False, eps_hat=True)
    rule, expected = portopt.AdamW(lr=0.01, bias_correction=False, eps_hat=True), p0.copy()
    state = rule.init(expected)
    for g in grads:
        param.grad = torch.from_numpy(g.copy())
        optimizer.step()
        rule.step(expected, g, state)
    assert same_bits(param.detach().numpy(), expected)
    with pytest.raises((TypeError, ValueError), match="bias_correction"):
        pt.Adam([param], bias_correction=0.5)
