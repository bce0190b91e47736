"""AdaGrad-Norm: one adaptive step size for the whole tree (Ward, Wu & Bottou 2018)."""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from ..fast.norms import sum_of_squares
from ..hyperparams import Hyperparameter, check_real, check_schedule, evaluate
from ..numerics import compute_dtype, dtype_name
from ..optimizer import Rule

__all__ = ["AdaGradNorm", "AdaGradNormScalars", "adagradnorm_kernel"]


class AdaGradNormScalars(NamedTuple):
    maximize: bool
    lr: float
    denominator: float  # b + eps, from the step's gradients (advance_host_state)


def adagradnorm_kernel(xp, s: AdaGradNormScalars, p, g):
    """One AdaGrad-Norm step for one array; ``b`` (below) is shared by the whole tree::

        g <- -g                                   (maximize)
        p <- p - lr * (g / (b + eps)),    b² <- b² + ||g||²  over every element of the tree
    """
    if s.maximize:
        g = -g
    return (p - s.lr * (g / s.denominator),)


class AdaGradNorm(Rule):
    """``b² ← b² + ‖g‖²`` (one scalar for the tree), ``p ← p − lr · g / (b + eps)``.

    The norm is portopt's fixed-order reduction (portopt.reductions), in float64 if any
    leaf is float64, else float32; ``b²`` lives in ``state.host`` as a Python float holding
    a value of that dtype, and ``b + eps`` is computed in that dtype on the host, so every
    backend steps with the same number. One host sync per step.
    """

    name = "AdaGradNorm"
    host_state_uses_gradients = True
    paper = "Ward, Wu & Bottou (2018), AdaGrad stepsizes: sharp convergence over nonconvex landscapes"
    kernel = staticmethod(adagradnorm_kernel)
    schedulable = ("lr",)  # eps enters b + eps on the host once per step from a fixed value

    def __init__(
        self,
        lr: Hyperparameter = 1e-2,
        initial_accumulator_value: float = 0.0,
        eps: float = 1e-10,
        maximize: bool = False,
        skip_nonfinite: bool = False,
        state_dtype: str | None = None,
        master_weights: str | None = None,
    ) -> None:
        self.lr = check_schedule("lr", lr)
        self._set_common(maximize, skip_nonfinite, state_dtype, master_weights)
        self.initial_accumulator_value = check_real("initial_accumulator_value", initial_accumulator_value)
        self.eps = check_real("eps", eps)

    def slot_names(self) -> tuple[str, ...]:
        return ()

    def initial_host_state(self) -> dict[str, float]:
        return {"sum_of_squares": self.initial_accumulator_value}

    def advance_host_state(self, steps_taken, host, xp, grads, params):
        if not grads:
            return {"denominator": 1.0}, host
        dtypes = {dtype_name(xp, compute_dtype(xp, g.dtype)) for g in grads}
        dtype = np.dtype("float64" if "float64" in dtypes else "float32")
        from portopt.backends import adapter_for

        squares = sum_of_squares(xp, grads, getattr(xp, dtype.name))
        total = adapter_for(xp).to_numpy(squares).astype(dtype)  # one host sync
        return self.advance_from_sum_of_squares(host, total)

    def advance_from_sum_of_squares(self, host: dict[str, float],
                                    total: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
        """``b² <- b² + total`` and the step's ``b + eps``, on the host in ``total``'s dtype (a
        0-d float32/float64 array: the gradients' fixed-order sum of squares). portopt.jax
        computes ``total`` inside the trace and calls this from its host callback."""
        dtype = total.dtype
        b2 = dtype.type(host["sum_of_squares"]) + total[()]
        denominator = np.sqrt(b2) + dtype.type(self.eps)  # correctly rounded, in dtype
        return {"denominator": float(denominator)}, {"sum_of_squares": float(b2)}

    def host_scalars(self, steps_taken: int) -> AdaGradNormScalars:
        """``denominator`` is a placeholder here: the step replaces it with the value
        :meth:`advance_host_state` computes from the gradients."""
        return AdaGradNormScalars(maximize=self.maximize, lr=evaluate("lr", self.lr, steps_taken), denominator=1.0)
