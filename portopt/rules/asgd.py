"""ASGD: SGD with a decaying step and a running (Polyak–Ruppert) average of the iterates
(Polyak & Juditsky 1992); semantics as torch.optim.ASGD."""

from __future__ import annotations

from typing import NamedTuple

from ..host_arithmetic import real_power
from ..hyperparams import Hyperparameter, check_real, check_schedule, evaluate
from ..optimizer import Rule, TorchPeer
from .common import effective_gradient

__all__ = ["ASGD", "ASGDScalars", "asgd_kernel"]


class ASGDScalars(NamedTuple):
    maximize: bool
    coupled_decay: bool
    averaging: bool  # mu_t != 1: ax moves towards p; at mu_t = 1 it is p
    weight_decay: float
    decay_factor: float
    eta: float
    mu: float


def asgd_kernel(xp, s: ASGDScalars, p, g, ax):
    """One ASGD step (t = steps taken + 1; eta_1 = lr, eta_t = lr / (1 + lambd lr (t-1))^alpha;
    mu_1 = 1, mu_t = 1 / max(1, t - 1 - t0))::

        g  <- -g;  g <- g + wd * p                (maximize; weight_decay)
        p  <- p * (1 - lambd eta_t)
        p  <- p - eta_t * g
        ax <- ax + (p - ax) * mu_t   if mu_t != 1, else ax <- p
    """
    g = effective_gradient(s, p, g)
    p = p * s.decay_factor
    p = p - s.eta * g
    if s.averaging:
        return p, ax + (p - ax) * s.mu
    return p, p


class ASGD(Rule):
    """``p ← p(1 − λη_t) − η_t g`` and the average ``ax ← ax + μ_t (p − ax)``, with
    ``η_t = lr/(1 + λ·lr·(t−1))^α`` and ``μ_t = 1/max(1, t − 1 − t0)``. Polyak & Juditsky (1992).
    The powers are computed in decimal arithmetic (no platform ``pow``)."""

    name = "ASGD"
    torch_peer = TorchPeer("ASGD")
    paper = "Polyak & Juditsky (1992), Acceleration of Stochastic Approximation by Averaging"
    kernel = staticmethod(asgd_kernel)

    def __init__(
        self,
        lr: Hyperparameter = 1e-2,
        lambd: float = 1e-4,
        alpha: float = 0.75,
        t0: float = 1e6,
        weight_decay: Hyperparameter = 0.0,
        maximize: bool = False,
        skip_nonfinite: bool = False,
        state_dtype: str | None = None,
        master_weights: str | None = None,
    ) -> None:
        self.lr = check_schedule("lr", lr)
        self.lambd = check_real("lambd", lambd)
        self.alpha = check_real("alpha", alpha)
        self.t0 = check_real("t0", t0)
        self.weight_decay = check_schedule("weight_decay", weight_decay)
        self._set_common(maximize, skip_nonfinite, state_dtype, master_weights)

    def slot_names(self) -> tuple[str, ...]:
        return ("ax",)

    def initial_host_state(self) -> dict[str, float]:
        return {"eta": evaluate("lr", self.lr, 0), "mu": 1.0}

    def host_state_names(self) -> tuple[str, ...]:
        return ("eta", "mu")

    def restore_host_state(self, step: int, host: dict[str, float]) -> dict[str, float]:
        """A checkpoint without eta and mu: those of ``step`` steps at this rule's lr."""
        if "eta" in host and "mu" in host:
            return host
        lr = evaluate("lr", self.lr, step)
        eta = lr if step == 0 else lr / real_power(1.0 + self.lambd * lr * step, self.alpha)
        return {**host, "eta": eta, "mu": 1.0 if step == 0 else 1.0 / max(1.0, step - self.t0)}

    def advance_host_state(self, steps_taken, host, xp, grads, params):
        """This step's ``eta`` and ``mu`` come from the state (as torch keeps them per parameter);
        the next step's are made with this step's lr: a scheduler's new lr enters one step later,
        as in torch.optim.ASGD."""
        t = steps_taken + 1
        lr = self.recalled("lr", steps_taken)
        eta, mu = host["eta"], host["mu"]
        scalars = {"eta": eta, "mu": mu, "decay_factor": 1.0 - self.lambd * eta, "averaging": mu != 1.0}
        following = {"eta": lr / real_power(1.0 + self.lambd * lr * t, self.alpha), "mu": 1.0 / max(1.0, t - self.t0)}
        return scalars, following

    def host_scalars(self, steps_taken: int) -> ASGDScalars:
        """``eta``, ``mu`` and ``decay_factor`` are placeholders here: the step takes them from the
        state (:meth:`advance_host_state`); ``averaging`` is set from the state's ``mu`` too."""
        weight_decay = evaluate("weight_decay", self.weight_decay, steps_taken)
        self.remember("lr", steps_taken, evaluate("lr", self.lr, steps_taken))  # for advance_host_state
        return ASGDScalars(maximize=self.maximize, coupled_decay=weight_decay != 0, averaging=False,
                           weight_decay=weight_decay, decay_factor=1.0, eta=0.0, mu=1.0)
