"""AdaBound / AMSBound: Adam with step sizes clipped into bounds that converge to SGD's.

Luo, Xiong, Liu & Sun (2019), "Adaptive Gradient Methods with Dynamic Bound of Learning
Rate"; semantics of the authors' reference implementation (with ``final_lr`` not rescaled
by a base lr: give a schedule for ``lr`` and the bounds stay those of ``final_lr``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ..divergence import warn_if_beta1_too_large
from ..host_arithmetic import power
from ..hyperparams import Hyperparameter, check_betas, check_flag, check_real, check_schedule, evaluate
from ..optimizer import Rule
from .common import effective_gradient

__all__ = ["AdaBound", "AdaBoundScalars", "adabound_kernel"]


class AdaBoundScalars(NamedTuple):
    maximize: bool
    coupled_decay: bool
    amsbound: bool
    weight_decay: float
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    step_size: float
    lower_bound: float
    upper_bound: float
    eps: float


def adabound_kernel(xp, s: AdaBoundScalars, p, g, m, v, v_max=None):
    """One AdaBound step (t = steps taken + 1)::

        g   <- -g;  g <- g + wd * p                          (maximize; weight_decay)
        m   <- b1 * m + (1 - b1) * g
        v   <- b2 * v + (1 - b2) * (g * g);  v_max <- maximum(v_max, v)   (amsbound)
        eta <- (lr * sqrt(1 - b2^t) / (1 - b1^t)) / (sqrt(v) + eps)
        eta <- minimum(maximum(eta, lower_t), upper_t),
               lower_t = final_lr * (1 - 1 / (gamma t + 1)),  upper_t = final_lr * (1 + 1 / (gamma t))
        p   <- p - eta * m
    """
    g = effective_gradient(s, p, g)
    m = s.beta1 * m + s.one_minus_beta1 * g
    v = s.beta2 * v + s.one_minus_beta2 * (g * g)
    if s.amsbound:
        v_max = xp.maximum(v_max, v)
    eta = s.step_size / (xp.sqrt(v_max if s.amsbound else v) + s.eps)
    eta = xp.minimum(xp.maximum(eta, s.lower_bound), s.upper_bound)
    p = p - eta * m
    return (p, m, v, v_max) if s.amsbound else (p, m, v)


class AdaBound(Rule):
    """Adam whose per-coordinate step ``lr·√(1-β2^t)/(1-β1^t)/(√v+eps)`` is clipped to
    ``[final_lr(1 - 1/(γt+1)), final_lr(1 + 1/(γt))]``; AMSBound with ``amsbound=True``."""

    name = "AdaBound"
    paper = "Luo, Xiong, Liu & Sun (2019), Adaptive Gradient Methods with Dynamic Bound of Learning Rate"
    kernel = staticmethod(adabound_kernel)

    def __init__(
        self,
        lr: Hyperparameter = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        final_lr: float = 0.1,
        gamma: float = 1e-3,
        eps: Hyperparameter = 1e-8,
        weight_decay: Hyperparameter = 0.0,
        amsbound: bool = False,
        maximize: bool = False,
        skip_nonfinite: bool = False,
        state_dtype: str | None = None,
        master_weights: str | None = None,
    ) -> None:
        self.lr = check_schedule("lr", lr)
        self.betas = check_betas(betas)
        self.eps = check_schedule("eps", eps)
        self.weight_decay = check_schedule("weight_decay", weight_decay)
        self._set_common(maximize, skip_nonfinite, state_dtype, master_weights)
        warn_if_beta1_too_large(self.betas)
        self.final_lr = check_real("final_lr", final_lr)
        self.gamma = check_real("gamma", gamma, high=1.0)
        if self.gamma == 0:
            raise ValueError("gamma must be > 0, got 0.0")
        self.amsbound = check_flag("amsbound", amsbound)

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsbound else ())

    def host_scalars(self, steps_taken: int) -> AdaBoundScalars:
        beta1, beta2 = self.betas
        t = steps_taken + 1
        lr = evaluate("lr", self.lr, steps_taken)
        return AdaBoundScalars(
            **self.gradient_scalars(steps_taken), amsbound=self.amsbound, beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2,
            one_minus_beta2=1.0 - beta2,
            step_size=lr * math.sqrt(1.0 - power(beta2, t)) / (1.0 - power(beta1, t)),
            lower_bound=self.final_lr * (1.0 - 1.0 / (self.gamma * t + 1.0)),
            upper_bound=self.final_lr * (1.0 + 1.0 / (self.gamma * t)),
            eps=evaluate("eps", self.eps, steps_taken),
        )
