"""RAdam: Adam with the variance of its adaptive step rectified (Liu et al. 2020, "On the
Variance of the Adaptive Learning Rate and Beyond"); semantics as torch.optim.RAdam."""

from __future__ import annotations

import math
from typing import NamedTuple

from ..divergence import warn_if_beta1_too_large
from ..host_arithmetic import power
from ..hyperparams import Hyperparameter, check_betas, check_flag, check_schedule, evaluate
from ..optimizer import Rule, TorchPeer
from .common import effective_gradient

__all__ = ["RAdam", "RAdamScalars", "radam_kernel"]


class RAdamScalars(NamedTuple):
    maximize: bool
    coupled_decay: bool
    decoupled_decay: bool
    rectified: bool  # rho_t > 5: the variance is tractable and the adaptive step is used
    weight_decay: float
    decay_factor: float
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    step_size: float
    eps: float


def radam_kernel(xp, s: RAdamScalars, p, g, m, v):
    """One RAdam step (t = steps taken + 1; rho_inf = 2/(1-b2) - 1, rho_t = rho_inf - 2 t b2^t/(1-b2^t))::

        g <- -g;  g <- g + wd * p  or  p <- p * (1 - lr * wd)       (maximize; weight decay)
        m <- b1 * m + (1 - b1) * g
        v <- b2 * v + (1 - b2) * (g * g)
        p <- p - (lr r_t sqrt(1 - b2^t) / (1 - b1^t)) * (m / (sqrt(v) + eps))    if rho_t > 5,
             r_t = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
        p <- p - (lr / (1 - b1^t)) * m                                             otherwise
    """
    g = effective_gradient(s, p, g)
    if s.decoupled_decay:
        p = p * s.decay_factor
    m = s.beta1 * m + s.one_minus_beta1 * g
    v = s.beta2 * v + s.one_minus_beta2 * (g * g)
    if s.rectified:
        return p - s.step_size * (m / (xp.sqrt(v) + s.eps)), m, v
    return p - s.step_size * m, m, v


class RAdam(Rule):
    """Adam whose adaptive step is used only once its variance is tractable (``rho_t > 5``),
    scaled by the rectification ``r_t``; before that, SGD with momentum. Liu et al. (2020)."""

    name = "RAdam"
    torch_peer = TorchPeer("RAdam")
    paper = "Liu et al. (2020), On the Variance of the Adaptive Learning Rate and Beyond"
    kernel = staticmethod(radam_kernel)

    def __init__(
        self,
        lr: Hyperparameter = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: Hyperparameter = 1e-8,
        weight_decay: Hyperparameter = 0.0,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        skip_nonfinite: bool = False,
        state_dtype: str | None = None,
        master_weights: str | None = None,
    ) -> None:
        self.lr = check_schedule("lr", lr)
        self.betas = check_betas(betas)
        self.eps = check_schedule("eps", eps)
        self.weight_decay = check_schedule("weight_decay", weight_decay)
        self.decoupled_weight_decay = check_flag("decoupled_weight_decay", decoupled_weight_decay)
        self._set_common(maximize, skip_nonfinite, state_dtype, master_weights)
        warn_if_beta1_too_large(self.betas)

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def host_scalars(self, steps_taken: int) -> RAdamScalars:
        lr = evaluate("lr", self.lr, steps_taken)
        weight_decay = evaluate("weight_decay", self.weight_decay, steps_taken)
        beta1, beta2 = self.betas
        t = steps_taken + 1
        bias_correction1 = 1.0 - power(beta1, t)
        beta2_t = power(beta2, t)
        bias_correction2 = 1.0 - beta2_t
        rho_inf = 2.0 / (1.0 - beta2) - 1.0
        rho_t = rho_inf - 2.0 * t * beta2_t / bias_correction2
        rectified = rho_t > 5.0
        if rectified:
            rectification = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                                      / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t))
            step_size = lr * rectification * math.sqrt(bias_correction2) / bias_correction1
        else:
            step_size = lr / bias_correction1
        return RAdamScalars(
            maximize=self.maximize,
            coupled_decay=weight_decay != 0 and not self.decoupled_weight_decay,
            decoupled_decay=weight_decay != 0 and self.decoupled_weight_decay,
            rectified=rectified, weight_decay=weight_decay, decay_factor=1.0 - lr * weight_decay,
            beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2, one_minus_beta2=1.0 - beta2,
            step_size=step_size, eps=evaluate("eps", self.eps, steps_taken),
        )
