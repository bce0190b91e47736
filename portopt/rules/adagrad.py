"""AdaGrad: per-coordinate step sizes from the sum of squared gradients.

Duchi, Hazan & Singer (2011); semantics and names as torch.optim.Adagrad.
"""

from __future__ import annotations

from typing import Any

from ..hyperparams import Hyperparameter, check_flag, check_number, evaluate
from ..optimizer import Rule

__all__ = ["AdaGrad", "adagrad_kernel"]


def adagrad_kernel(xp, s, p, g, accumulator):
    """One AdaGrad step, elementwise, in this order (t = steps taken + 1)::

        g   <- -g                       if maximize
        g   <- g + wd * p               if weight_decay
        acc <- acc + g * g
        p   <- p - (lr / (1 + (t-1) * lr_decay)) * (g / (sqrt(acc) + eps))
    """
    if s.maximize:
        g = -g
    if s.coupled_decay:
        g = g + s.weight_decay * p
    accumulator = accumulator + g * g
    return p - s.step_size * (g / (xp.sqrt(accumulator) + s.eps)), accumulator


class AdaGrad(Rule):
    """``acc += g²``, ``p -= lr/(1+(t-1)·lr_decay) · g / (sqrt(acc) + eps)``.

    Duchi et al. (2011); as torch.optim.Adagrad (state key ``sum``).
    """

    name = "AdaGrad"
    kernel = staticmethod(adagrad_kernel)

    def __init__(
        self,
        lr: Hyperparameter = 1e-2,
        lr_decay: float = 0.0,
        weight_decay: Hyperparameter = 0.0,
        initial_accumulator_value: float = 0.0,
        eps: Hyperparameter = 1e-10,
        maximize: bool = False,
        skip_nonfinite: bool = False,
    ) -> None:
        self.lr = check_number("lr", lr, schedulable=True)
        self.lr_decay = check_number("lr_decay", lr_decay)
        self.weight_decay = check_number("weight_decay", weight_decay, schedulable=True)
        self.initial_accumulator_value = check_number("initial_accumulator_value", initial_accumulator_value)
        self.eps = check_number("eps", eps, schedulable=True)
        self.maximize = check_flag("maximize", maximize)
        self.skip_nonfinite = check_flag("skip_nonfinite", skip_nonfinite)

    def hyperparameters(self) -> dict[str, Any]:
        return dict(
            lr=self.lr, lr_decay=self.lr_decay, weight_decay=self.weight_decay,
            initial_accumulator_value=self.initial_accumulator_value, eps=self.eps,
            maximize=self.maximize, skip_nonfinite=self.skip_nonfinite,
        )

    def slot_names(self) -> tuple[str, ...]:
        return ("sum",)

    def slot_initial_value(self, slot: str) -> float:
        return self.initial_accumulator_value

    def host_scalars(self, steps_taken: int) -> dict[str, float | bool]:
        lr = evaluate("lr", self.lr, steps_taken)
        weight_decay = evaluate("weight_decay", self.weight_decay, steps_taken)
        return dict(
            maximize=self.maximize,
            coupled_decay=weight_decay != 0,
            weight_decay=weight_decay,
            step_size=lr / (1.0 + steps_taken * self.lr_decay),
            eps=evaluate("eps", self.eps, steps_taken),
        )
