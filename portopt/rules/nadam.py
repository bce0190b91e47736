"""NAdam: Adam with Nesterov momentum (Dozat 2016), momentum schedule as torch.optim.NAdam."""

from __future__ import annotations

from typing import NamedTuple

from ..divergence import warn_if_beta1_too_large
from ..host_arithmetic import power, real_power
from ..hyperparams import Hyperparameter, check_betas, check_flag, check_real, check_schedule, evaluate
from ..optimizer import Rule, TorchPeer
from .common import effective_gradient

__all__ = ["NAdam", "NAdamScalars", "nadam_kernel"]


class NAdamScalars(NamedTuple):
    maximize: bool
    coupled_decay: bool
    decoupled_decay: bool
    weight_decay: float
    decay_factor: float
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    bias_correction2: float
    gradient_step: float
    momentum_step: float
    eps: float


def nadam_kernel(xp, s: NAdamScalars, p, g, m, v):
    """One NAdam step (t = steps taken + 1, mu_t = b1 (1 - 0.96^(t psi) / 2))::

        g <- -g;  g <- g + wd * p  or  p <- p * (1 - lr * wd)       (maximize; weight decay)
        m <- b1 * m + (1 - b1) * g
        v <- b2 * v + (1 - b2) * (g * g)
        d <- sqrt(v / (1 - b2^t)) + eps
        p <- p - (lr (1 - mu_t) / (1 - prod_{k<=t} mu_k)) * (g / d)
        p <- p - (lr mu_{t+1} / (1 - prod_{k<=t+1} mu_k)) * (m / d)
    """
    g = effective_gradient(s, p, g)
    if s.decoupled_decay:
        p = p * s.decay_factor
    m = s.beta1 * m + s.one_minus_beta1 * g
    v = s.beta2 * v + s.one_minus_beta2 * (g * g)
    denom = xp.sqrt(v / s.bias_correction2) + s.eps
    p = p - s.gradient_step * (g / denom)
    return p - s.momentum_step * (m / denom), m, v


class NAdam(Rule):
    """Nesterov-accelerated Adam with torch's momentum schedule ``μ_t = β1 (1 - 0.96^(t·ψ)/2)``."""

    name = "NAdam"
    torch_peer = TorchPeer("NAdam")
    paper = "Dozat (2016), Incorporating Nesterov Momentum into Adam"
    kernel = staticmethod(nadam_kernel)

    def __init__(
        self,
        lr: Hyperparameter = 2e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: Hyperparameter = 1e-8,
        weight_decay: Hyperparameter = 0.0,
        momentum_decay: float = 4e-3,
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
        self._set_common(maximize, skip_nonfinite, state_dtype, master_weights)
        warn_if_beta1_too_large(self.betas)
        self.momentum_decay = check_real("momentum_decay", momentum_decay)
        self.decoupled_weight_decay = check_flag("decoupled_weight_decay", decoupled_weight_decay)

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq")

    def _mu(self, t: int) -> float:
        """``mu_t = beta1 (1 - 0.96^(t psi) / 2)``; the power in decimal arithmetic, remembered for
        the next step (each step asks for mu_t and mu_{t+1})."""
        remembered = self.__dict__.setdefault("_mus", {})
        mu = remembered.get(t)
        if mu is None:
            if len(remembered) > 8:
                remembered.clear()
            mu = remembered[t] = self.betas[0] * (1.0 - 0.5 * real_power(0.96, t * self.momentum_decay))
        return mu

    def initial_host_state(self) -> dict[str, float]:
        return {"mu_product": 1.0}

    def restore_host_state(self, step: int, host: dict[str, float]) -> dict[str, float]:
        """A checkpoint without Πμ (portopt 0.1): the product of this rule's mu_1..mu_step."""
        if "mu_product" in host:
            return host
        product = 1.0
        for k in range(1, step + 1):
            product = product * self._mu(k)
        return {**host, "mu_product": product}

    def advance_host_state(self, steps_taken, host, xp, grads, params):
        """``prod mu`` times this step's mu_t, kept in ``state.host`` (as torch keeps
        ``mu_product``): O(1) per step, and a changed beta1 enters from its step on."""
        t = steps_taken + 1
        lr = self.recalled("lr", steps_taken)
        mu, mu_next = self._mu(t), self._mu(t + 1)
        product = host["mu_product"] * mu
        steps = {"gradient_step": lr * (1.0 - mu) / (1.0 - product),
                 "momentum_step": lr * mu_next / (1.0 - product * mu_next)}
        return steps, {"mu_product": product}

    def host_scalars(self, steps_taken: int) -> NAdamScalars:
        lr = self.remember("lr", steps_taken, evaluate("lr", self.lr, steps_taken))
        weight_decay = evaluate("weight_decay", self.weight_decay, steps_taken)
        beta1, beta2 = self.betas
        t = steps_taken + 1
        return NAdamScalars(
            maximize=self.maximize, coupled_decay=weight_decay != 0 and not self.decoupled_weight_decay,
            decoupled_decay=weight_decay != 0 and self.decoupled_weight_decay, weight_decay=weight_decay,
            decay_factor=1.0 - lr * weight_decay, beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2,
            one_minus_beta2=1.0 - beta2, bias_correction2=1.0 - power(beta2, t),
            gradient_step=0.0, momentum_step=0.0,  # from Πμ in the state: advance_host_state
            eps=evaluate("eps", self.eps, steps_taken),
        )


