"""Rprop: resilient backpropagation, a per-coordinate step size grown while the gradient keeps
its sign and shrunk when it flips (Riedmiller & Braun 1993); semantics as torch.optim.Rprop."""

from __future__ import annotations

from typing import NamedTuple

from ..hyperparams import check_real
from ..optimizer import Rule, TorchPeer
from .common import sign

__all__ = ["Rprop", "RpropScalars", "rprop_kernel"]


class RpropScalars(NamedTuple):
    maximize: bool
    eta_minus: float
    eta_plus: float
    step_size_min: float
    step_size_max: float
    zero: float
    one: float


def rprop_kernel(xp, s: RpropScalars, p, g, prev, step_size):
    """One Rprop step::

        g    <- -g                                                   (maximize)
        f    <- eta+ if g * prev > 0, eta- if g * prev < 0, else 1
        step <- minimum(maximum(step * f, step_min), step_max)
        g    <- 0 where g * prev < 0                                 (no move after a sign flip)
        p    <- p - sign(g) * step;   prev <- g
    """
    if s.maximize:
        g = -g
    agreement = g * prev
    grew, flipped = agreement > s.zero, agreement < s.zero
    factor = xp.where(grew, s.eta_plus, xp.where(flipped, s.eta_minus, s.one))
    step_size = xp.minimum(xp.maximum(step_size * factor, s.step_size_min), s.step_size_max)
    g = xp.where(flipped, s.zero, g)
    return p - sign(xp, s, g) * step_size, g, step_size


class Rprop(Rule):
    """``step ← clip(step · (η+ if g·prev > 0, η- if < 0, else 1), step_min, step_max)``,
    ``p ← p − sign(g)·step``, with ``g`` zeroed after a sign flip. Riedmiller & Braun (1993).

    The step sizes start at ``lr``; as torch.optim.Rprop, ``lr`` is read once, when the
    state is made (it is the slot's initial value, not a per-step scale).
    """

    name = "Rprop"
    torch_peer = TorchPeer("Rprop")
    paper = "Riedmiller & Braun (1993), A Direct Adaptive Method for Faster Backpropagation Learning: the RPROP Algorithm"
    kernel = staticmethod(rprop_kernel)
    schedulable = ()  # lr is read once, when the state is made

    def __init__(
        self,
        lr: float = 1e-2,
        etas: tuple[float, float] = (0.5, 1.2),
        step_sizes: tuple[float, float] = (1e-6, 50.0),
        maximize: bool = False,
        skip_nonfinite: bool = False,
        state_dtype: str | None = None,
        master_weights: str | None = None,
    ) -> None:
        self.lr = check_real("lr", lr)
        self.etas = _pair("etas", etas)
        if not 0.0 < self.etas[0] < 1.0 < self.etas[1]:
            raise ValueError(f"etas must satisfy 0 < etas[0] < 1 < etas[1], got {self.etas}")
        self.step_sizes = _pair("step_sizes", step_sizes)
        if not self.step_sizes[0] <= self.step_sizes[1]:
            raise ValueError(f"step_sizes must be (minimum, maximum) with minimum <= maximum, got {self.step_sizes}")
        self._set_common(maximize, skip_nonfinite, state_dtype, master_weights)

    def slot_names(self) -> tuple[str, ...]:
        return ("prev", "step_size")

    def slot_initial_value(self, slot: str) -> float:
        return self.lr if slot == "step_size" else 0.0

    def host_scalars(self, steps_taken: int) -> RpropScalars:
        return RpropScalars(maximize=self.maximize, eta_minus=self.etas[0], eta_plus=self.etas[1],
                            step_size_min=self.step_sizes[0], step_size_max=self.step_sizes[1], zero=0.0, one=1.0)


def _pair(name: str, value: object) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair, got {value!r}")
    return (check_real(f"{name}[0]", value[0]), check_real(f"{name}[1]", value[1]))

