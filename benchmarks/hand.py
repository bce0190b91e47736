"""Hand-written NumPy loops of the benchmarked rules: what a scientist writes without portopt.

The same math as portopt's rules with torch.optim's defaults, in place with NumPy's ufuncs
and Python floats for the scalars (``b1 ** t``: the platform's pow). They are the yardstick
for the small-problem rows, not a reference: their bits are not portopt's promise.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

__all__ = ["HAND_LOOPS", "hand_loop"]


def _adam(params: list, grads: list, state: dict, decoupled: bool = False, amsgrad: bool = False,
          lr: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, wd: float = 0.0) -> None:
    state["t"] += 1
    t = state["t"]
    step_size = lr / (1 - b1 ** t)
    correction2 = math.sqrt(1 - b2 ** t)
    for p, g, m, v, v_max in zip(params, grads, state["m"], state["v"], state["v_max"]):
        if decoupled:
            p *= 1 - lr * wd
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        if amsgrad:
            np.maximum(v_max, v, out=v_max)
        p -= step_size * (m / (np.sqrt(v_max if amsgrad else v) / correction2 + eps))


def _adagrad(params: list, grads: list, state: dict, lr: float = 1e-2, eps: float = 1e-10) -> None:
    for p, g, s in zip(params, grads, state["m"]):
        s += g * g
        p -= lr * (g / (np.sqrt(s) + eps))


def _rmsprop(params: list, grads: list, state: dict, lr: float = 1e-2, alpha: float = 0.99,
             eps: float = 1e-8) -> None:
    for p, g, s in zip(params, grads, state["m"]):
        s *= alpha
        s += (1 - alpha) * (g * g)
        p -= lr * (g / (np.sqrt(s) + eps))


HAND_LOOPS: dict[str, Callable[..., None]] = {
    "Adam": _adam,
    "AdamW": lambda params, grads, state: _adam(params, grads, state, decoupled=True, wd=1e-2),
    "AMSGrad": lambda params, grads, state: _adam(params, grads, state, amsgrad=True),
    "AdaGrad": _adagrad,
    "RMSProp": _rmsprop,
}


def hand_loop(rule_name: str, params: list) -> Callable[[list], None]:
    """``step(grads)`` for ``params`` (a list of NumPy arrays) with its own state."""
    state = {"t": 0, "m": [np.zeros_like(p) for p in params], "v": [np.zeros_like(p) for p in params],
             "v_max": [np.zeros_like(p) for p in params]}
    loop = HAND_LOOPS[rule_name]
    return lambda grads: loop(params, grads, state)
