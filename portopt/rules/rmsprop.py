"""RMSProp, plain or centered, with optional heavy-ball momentum.

Tieleman & Hinton (2012), centered form from Graves (2013); as torch.optim.RMSprop.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from ..hyperparams import Hyperparameter, check_flag, check_real, check_schedule, evaluate
from ..optimizer import Rule, TorchPeer
from .common import effective_gradient

__all__ = ["RMSProp", "RMSPropScalars", "rmsprop_kernel"]


class RMSPropScalars(NamedTuple):
    maximize: bool
    coupled_decay: bool
    centered: bool
    use_momentum: bool
    weight_decay: float
    alpha: float
    one_minus_alpha: float
    momentum: float
    lr: float
    eps: float


def rmsprop_kernel(xp, s: RMSPropScalars, p, g, square_avg, *optional):
    """One RMSProp step, elementwise, in this order::

        g   <- -g                              if maximize
        g   <- g + wd * p                      if weight_decay
        sq  <- alpha * sq + (1 - alpha) * (g * g)
        ga  <- alpha * ga + (1 - alpha) * g    if centered
        avg <- sqrt(sq - ga * ga) + eps        (centered; else sqrt(sq) + eps)
        buf <- momentum * buf + g / avg;  p <- p - lr * buf     if momentum > 0
        p   <- p - lr * (g / avg)                               otherwise

    ``optional`` holds ``momentum_buffer`` (if momentum) then ``grad_avg`` (if centered).
    """
    buffer = optional[0] if s.use_momentum else None  # (None: not read without the flag)
    grad_avg = optional[-1] if s.centered else None
    buffer_: Any = buffer
    grad_avg_: Any = grad_avg
    g = effective_gradient(s, p, g)
    square_avg = s.alpha * square_avg + s.one_minus_alpha * (g * g)
    if s.centered:
        grad_avg = s.alpha * grad_avg_ + s.one_minus_alpha * g
        avg = xp.sqrt(square_avg - grad_avg * grad_avg) + s.eps
    else:
        avg = xp.sqrt(square_avg) + s.eps
    if s.use_momentum:
        buffer = s.momentum * buffer_ + g / avg
        p = p - s.lr * buffer
    else:
        p = p - s.lr * (g / avg)
    slots = (square_avg,) + ((buffer,) if s.use_momentum else ()) + ((grad_avg,) if s.centered else ())
    return (p,) + slots


class RMSProp(Rule):
    """``sq = α sq + (1-α) g²``, ``p -= lr · g / (sqrt(sq) + eps)``; centered subtracts
    the squared running mean of g; momentum accumulates ``g / avg``. As torch.optim.RMSprop.
    """

    name = "RMSProp"
    torch_peer = TorchPeer("RMSprop")
    paper = "Tieleman & Hinton (2012), Lecture 6.5 (Coursera); centered: Graves (2013)"
    kernel = staticmethod(rmsprop_kernel)

    def __init__(
        self,
        lr: Hyperparameter = 1e-2,
        alpha: float = 0.99,
        eps: Hyperparameter = 1e-8,
        weight_decay: Hyperparameter = 0.0,
        momentum: float = 0.0,
        centered: bool = False,
        maximize: bool = False,
        skip_nonfinite: bool = False,
        state_dtype: str | None = None,
        master_weights: str | None = None,
    ) -> None:
        self.lr = check_schedule("lr", lr)
        self.eps = check_schedule("eps", eps)
        self.weight_decay = check_schedule("weight_decay", weight_decay)
        self.momentum = check_real("momentum", momentum)
        self._set_common(maximize, skip_nonfinite, state_dtype, master_weights)
        self.alpha = check_real("alpha", alpha, high=1.0)
        self.centered = check_flag("centered", centered)

    def slot_names(self) -> tuple[str, ...]:
        return (
            ("square_avg",)
            + (("momentum_buffer",) if self.momentum > 0 else ())
            + (("grad_avg",) if self.centered else ())
        )

    def host_scalars(self, steps_taken: int) -> RMSPropScalars:
        return RMSPropScalars(
            **self.gradient_scalars(steps_taken),
            centered=self.centered,
            use_momentum=self.momentum > 0,
            alpha=self.alpha,
            one_minus_alpha=1.0 - self.alpha,
            momentum=self.momentum,
            lr=evaluate("lr", self.lr, steps_taken),
            eps=evaluate("eps", self.eps, steps_taken),
        )
