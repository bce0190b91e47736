"""Adamax: Adam with the infinity norm (Kingma & Ba 2015, section 7.1); as torch.optim.Adamax."""

from __future__ import annotations

from typing import NamedTuple

from ..divergence import warn_if_beta1_too_large
from ..host_arithmetic import power
from ..hyperparams import Hyperparameter, check_betas, check_schedule, evaluate
from ..optimizer import Rule, TorchPeer
from .common import effective_gradient

__all__ = ["Adamax", "AdamaxScalars", "adamax_kernel"]


class AdamaxScalars(NamedTuple):
    maximize: bool
    coupled_decay: bool
    weight_decay: float
    beta1: float
    one_minus_beta1: float
    beta2: float
    step_size: float
    eps: float


def adamax_kernel(xp, s: AdamaxScalars, p, g, m, u):
    """One Adamax step (t = steps taken + 1)::

        g <- -g;  g <- g + wd * p                 (maximize; weight_decay)
        m <- b1 * m + (1 - b1) * g
        u <- maximum(b2 * u, |g| + eps)
        p <- p - (lr / (1 - b1^t)) * (m / u)
    """
    g = effective_gradient(s, p, g)
    m = s.beta1 * m + s.one_minus_beta1 * g
    u = xp.maximum(s.beta2 * u, xp.abs(g) + s.eps)
    return p - s.step_size * (m / u), m, u


class Adamax(Rule):
    """``m = β1 m + (1-β1) g``, ``u = max(β2 u, |g| + eps)``, ``p -= lr/(1-β1^t) · m/u``."""

    name = "Adamax"
    torch_peer = TorchPeer("Adamax")
    paper = "Kingma & Ba (2015), section 7.1"
    kernel = staticmethod(adamax_kernel)

    def __init__(
        self,
        lr: Hyperparameter = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: Hyperparameter = 1e-8,
        weight_decay: Hyperparameter = 0.0,
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

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_inf")

    def host_scalars(self, steps_taken: int) -> AdamaxScalars:
        beta1, beta2 = self.betas
        return AdamaxScalars(
            **self.gradient_scalars(steps_taken),
            beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2,
            step_size=evaluate("lr", self.lr, steps_taken) / (1.0 - power(beta1, steps_taken + 1)),
            eps=evaluate("eps", self.eps, steps_taken),
        )
