"""Lion: evolved sign momentum (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms")."""

from __future__ import annotations

from typing import NamedTuple

from ..hyperparams import Hyperparameter, check_betas, check_schedule, evaluate
from ..optimizer import Rule
from .common import SIGN_SCALARS, sign

__all__ = ["Lion", "LionScalars", "lion_kernel"]


class LionScalars(NamedTuple):
    maximize: bool
    decoupled_decay: bool
    decay_factor: float
    lr: float
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    zero: float
    one: float


def lion_kernel(xp, s: LionScalars, p, g, m):
    """One Lion step::

        g <- -g                                     (maximize)
        p <- p * (1 - lr * wd)                      (decoupled weight decay)
        p <- p - lr * sign(b1 * m + (1 - b1) * g)
        m <- b2 * m + (1 - b2) * g
    """
    if s.maximize:
        g = -g
    if s.decoupled_decay:
        p = p * s.decay_factor
    p = p - s.lr * sign(xp, s, s.beta1 * m + s.one_minus_beta1 * g)
    return p, s.beta2 * m + s.one_minus_beta2 * g


class Lion(Rule):
    """``p -= lr·sign(β1 m + (1-β1) g)`` after ``p *= 1 - lr·wd``; ``m = β2 m + (1-β2) g``."""

    name = "Lion"
    paper = "Chen et al. (2023), Symbolic Discovery of Optimization Algorithms"
    kernel = staticmethod(lion_kernel)

    def __init__(
        self,
        lr: Hyperparameter = 1e-4,
        betas: tuple[float, float] = (0.9, 0.99),
        weight_decay: Hyperparameter = 0.0,
        maximize: bool = False,
        skip_nonfinite: bool = False,
        state_dtype: str | None = None,
        master_weights: str | None = None,
    ) -> None:
        self.lr = check_schedule("lr", lr)
        self.betas = check_betas(betas)
        self.weight_decay = check_schedule("weight_decay", weight_decay)
        self._set_common(maximize, skip_nonfinite, state_dtype, master_weights)

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg",)

    def host_scalars(self, steps_taken: int) -> LionScalars:
        lr = evaluate("lr", self.lr, steps_taken)
        weight_decay = evaluate("weight_decay", self.weight_decay, steps_taken)
        beta1, beta2 = self.betas
        return LionScalars(
            maximize=self.maximize, decoupled_decay=weight_decay != 0, decay_factor=1.0 - lr * weight_decay,
            lr=lr, beta1=beta1, one_minus_beta1=1.0 - beta1, beta2=beta2, one_minus_beta2=1.0 - beta2,
            **SIGN_SCALARS,
        )
