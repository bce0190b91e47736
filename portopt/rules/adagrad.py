"""AdaGrad: per-coordinate step sizes from the sum of squared gradients.

Duchi, Hazan & Singer (2011); semantics and names as torch.optim.Adagrad.
"""

from __future__ import annotations

from typing import NamedTuple

from ..hyperparams import Hyperparameter, check_real, check_schedule, evaluate
from ..optimizer import Rule, TorchPeer
from .common import effective_gradient

__all__ = ["AdaGrad", "AdaGradScalars", "adagrad_kernel"]


class AdaGradScalars(NamedTuple):
    maximize: bool
    coupled_decay: bool
    weight_decay: float
    step_size: float
    eps: float


def adagrad_kernel(xp, s: AdaGradScalars, p, g, accumulator):
    """One AdaGrad step, elementwise, in this order (t = steps taken + 1)::

        g   <- -g                       if maximize
        g   <- g + wd * p               if weight_decay
        acc <- acc + g * g
        p   <- p - (lr / (1 + (t-1) * lr_decay)) * (g / (sqrt(acc) + eps))
    """
    g = effective_gradient(s, p, g)
    accumulator = accumulator + g * g
    return p - s.step_size * (g / (xp.sqrt(accumulator) + s.eps)), accumulator


class AdaGrad(Rule):
    """``acc += g²``, ``p -= lr/(1+(t-1)·lr_decay) · g / (sqrt(acc) + eps)``.

    Duchi et al. (2011); as torch.optim.Adagrad (state key ``sum``).
    """

    name = "AdaGrad"
    torch_peer = TorchPeer("Adagrad")
    paper = "Duchi, Hazan & Singer (2011), Adaptive Subgradient Methods"
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
        state_dtype: str | None = None,
        master_weights: str | None = None,
    ) -> None:
        self.lr = check_schedule("lr", lr)
        self.weight_decay = check_schedule("weight_decay", weight_decay)
        self.eps = check_schedule("eps", eps)
        self._set_common(maximize, skip_nonfinite, state_dtype, master_weights)
        self.lr_decay = check_real("lr_decay", lr_decay)
        self.initial_accumulator_value = check_real("initial_accumulator_value", initial_accumulator_value)

    def slot_names(self) -> tuple[str, ...]:
        return ("sum",)

    def slot_initial_value(self, slot: str) -> float:
        return self.initial_accumulator_value

    def host_scalars(self, steps_taken: int) -> AdaGradScalars:
        lr = evaluate("lr", self.lr, steps_taken)
        return AdaGradScalars(
            **self.gradient_scalars(steps_taken),
            step_size=lr / (1.0 + steps_taken * self.lr_decay),
            eps=evaluate("eps", self.eps, steps_taken),
        )
