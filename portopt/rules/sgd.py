"""SGD with heavy-ball or Nesterov momentum, and sign-based SGD.

SGD as torch.optim.SGD (Polyak 1964; Nesterov 1983; Sutskever et al. 2013); SignSGD and
its momentum form Signum from Bernstein et al. (2018).
"""

from __future__ import annotations

from typing import NamedTuple

from ..hyperparams import Hyperparameter, check_flag, check_real, check_schedule, evaluate
from ..optimizer import Rule, TorchPeer
from .common import effective_gradient, sign

__all__ = ["SGD", "SignSGD", "SGDScalars", "SignSGDScalars", "sgd_kernel", "signsgd_kernel"]


class SGDScalars(NamedTuple):
    maximize: bool
    coupled_decay: bool
    use_momentum: bool
    nesterov: bool
    first_step: bool
    weight_decay: float
    momentum: float
    one_minus_dampening: float
    lr: float


class SignSGDScalars(NamedTuple):
    maximize: bool
    coupled_decay: bool
    use_momentum: bool
    weight_decay: float
    momentum: float
    one_minus_momentum: float
    lr: float
    zero: float
    one: float


def sgd_kernel(xp, s: SGDScalars, p, g, *buffer):
    """One SGD step, elementwise::

        g   <- -g;  g <- g + wd * p                     (maximize; weight_decay)
        buf <- g on the first step, else mu * buf + (1 - dampening) * g     (momentum)
        g   <- g + mu * buf  (nesterov)  or  g <- buf
        p   <- p - lr * g
    """
    g = effective_gradient(s, p, g)
    if not s.use_momentum:
        return (p - s.lr * g,)
    buf = g if s.first_step else s.momentum * buffer[0] + s.one_minus_dampening * g
    g = g + s.momentum * buf if s.nesterov else buf
    return p - s.lr * g, buf


class SGD(Rule):
    """``p -= lr·g``; with momentum ``buf = μ buf + (1-τ) g`` (``buf = g`` at first) and
    ``p -= lr·buf`` (Nesterov: ``p -= lr·(g + μ buf)``). As torch.optim.SGD."""

    name = "SGD"
    torch_peer = TorchPeer("SGD")
    paper = "Polyak (1964); Nesterov (1983); Sutskever et al. (2013)"
    kernel = staticmethod(sgd_kernel)

    def __init__(
        self,
        lr: Hyperparameter = 1e-3,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: Hyperparameter = 0.0,
        nesterov: bool = False,
        maximize: bool = False,
        skip_nonfinite: bool = False,
        state_dtype: str | None = None,
        master_weights: str | None = None,
    ) -> None:
        self.lr = check_schedule("lr", lr)
        self.momentum = check_real("momentum", momentum)
        self.weight_decay = check_schedule("weight_decay", weight_decay)
        self._set_common(maximize, skip_nonfinite, state_dtype, master_weights)
        self.dampening = check_real("dampening", dampening, high=1.0, closed_high=True)
        self.nesterov = check_flag("nesterov", nesterov)
        if nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError("nesterov requires momentum > 0 and dampening = 0")

    def slot_names(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.momentum != 0 else ()

    def host_scalars(self, steps_taken: int) -> SGDScalars:
        return SGDScalars(
            **self.gradient_scalars(steps_taken), use_momentum=self.momentum != 0,
            nesterov=self.nesterov, first_step=steps_taken == 0,
            momentum=self.momentum, one_minus_dampening=1.0 - self.dampening,
            lr=evaluate("lr", self.lr, steps_taken),
        )


def signsgd_kernel(xp, s: SignSGDScalars, p, g, *momentum):
    """One SignSGD / Signum step::

        g <- -g;  g <- g + wd * p                (maximize; weight_decay)
        m <- beta * m + (1 - beta) * g           (momentum: Signum)
        p <- p - lr * sign(m or g)
    """
    g = effective_gradient(s, p, g)
    if not s.use_momentum:
        return (p - s.lr * sign(xp, s, g),)
    m = s.momentum * momentum[0] + s.one_minus_momentum * g
    return p - s.lr * sign(xp, s, m), m


class SignSGD(Rule):
    """``p -= lr·sign(g)``; with momentum β (Signum) ``m = β m + (1-β) g``, ``p -= lr·sign(m)``.

    Bernstein, Wang, Azizzadenesheli & Anandkumar (2018).
    """

    name = "SignSGD"
    paper = "Bernstein, Wang, Azizzadenesheli & Anandkumar (2018), signSGD"
    kernel = staticmethod(signsgd_kernel)

    def __init__(
        self,
        lr: Hyperparameter = 1e-3,
        momentum: float = 0.0,
        weight_decay: Hyperparameter = 0.0,
        maximize: bool = False,
        skip_nonfinite: bool = False,
        state_dtype: str | None = None,
        master_weights: str | None = None,
    ) -> None:
        self.lr = check_schedule("lr", lr)
        self.weight_decay = check_schedule("weight_decay", weight_decay)
        self._set_common(maximize, skip_nonfinite, state_dtype, master_weights)
        self.momentum = check_real("momentum", momentum, high=1.0)

    def slot_names(self) -> tuple[str, ...]:
        return ("momentum_buffer",) if self.momentum != 0 else ()

    def host_scalars(self, steps_taken: int) -> SignSGDScalars:
        return SignSGDScalars(
            **self.gradient_scalars(steps_taken), use_momentum=self.momentum != 0, momentum=self.momentum,
            one_minus_momentum=1.0 - self.momentum,
            lr=evaluate("lr", self.lr, steps_taken), zero=0.0, one=1.0,
        )
