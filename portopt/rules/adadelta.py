"""AdaDelta (Zeiler 2012); as torch.optim.Adadelta."""

from __future__ import annotations

from typing import NamedTuple

from ..hyperparams import Hyperparameter, check_real, check_schedule, evaluate
from ..optimizer import Rule, TorchPeer
from .common import effective_gradient

__all__ = ["AdaDelta", "AdaDeltaScalars", "adadelta_kernel"]


class AdaDeltaScalars(NamedTuple):
    maximize: bool
    coupled_decay: bool
    weight_decay: float
    rho: float
    one_minus_rho: float
    lr: float
    eps: float


def adadelta_kernel(xp, s: AdaDeltaScalars, p, g, square_avg, acc_delta):
    """One AdaDelta step::

        g     <- -g;  g <- g + wd * p                         (maximize; weight_decay)
        sq    <- rho * sq + (1 - rho) * (g * g)
        delta <- sqrt(acc + eps) / sqrt(sq + eps) * g
        acc   <- rho * acc + (1 - rho) * (delta * delta)
        p     <- p - lr * delta
    """
    g = effective_gradient(s, p, g)
    square_avg = s.rho * square_avg + s.one_minus_rho * (g * g)
    delta = xp.sqrt(acc_delta + s.eps) / xp.sqrt(square_avg + s.eps) * g
    acc_delta = s.rho * acc_delta + s.one_minus_rho * (delta * delta)
    return p - s.lr * delta, square_avg, acc_delta


class AdaDelta(Rule):
    """``sq = ρ sq + (1-ρ) g²``, ``Δ = √(acc+eps)/√(sq+eps) · g``, ``acc = ρ acc + (1-ρ) Δ²``, ``p -= lr Δ``."""

    name = "AdaDelta"
    torch_peer = TorchPeer("Adadelta")
    paper = "Zeiler (2012), ADADELTA: An Adaptive Learning Rate Method"
    kernel = staticmethod(adadelta_kernel)

    def __init__(
        self,
        lr: Hyperparameter = 1.0,
        rho: float = 0.9,
        eps: Hyperparameter = 1e-6,
        weight_decay: Hyperparameter = 0.0,
        maximize: bool = False,
        skip_nonfinite: bool = False,
        state_dtype: str | None = None,
        master_weights: str | None = None,
    ) -> None:
        self.lr = check_schedule("lr", lr)
        self.eps = check_schedule("eps", eps)
        self.weight_decay = check_schedule("weight_decay", weight_decay)
        self._set_common(maximize, skip_nonfinite, state_dtype, master_weights)
        self.rho = check_real("rho", rho, high=1.0, closed_high=True)

    def slot_names(self) -> tuple[str, ...]:
        return ("square_avg", "acc_delta")

    def host_scalars(self, steps_taken: int) -> AdaDeltaScalars:
        return AdaDeltaScalars(
            **self.gradient_scalars(steps_taken),
            rho=self.rho, one_minus_rho=1.0 - self.rho, lr=evaluate("lr", self.lr, steps_taken),
            eps=evaluate("eps", self.eps, steps_taken),
        )
