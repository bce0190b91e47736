"""Adam, AdamW and AMSGrad: one kernel, three sets of options.

Kingma & Ba (2015), Algorithm 1; decoupled decay from Loshchilov & Hutter (2019);
AMSGrad from Reddi et al. (2018). Semantics and names as torch.optim.Adam / AdamW.
Two forms torch.optim lacks: ``bias_correction=False`` (BERT's Adam; HF's ``correct_bias=False``,
apex's ``bias_correction=False``) and ``eps_hat=True``, the ε̂ form of Kingma & Ba §2 that Keras and
TensorFlow use (ε added to √v, not to √v̂).
"""

from __future__ import annotations

import math
from typing import NamedTuple

from ..divergence import warn_if_beta1_too_large
from ..host_arithmetic import power
from ..hyperparams import Hyperparameter, check_betas, check_flag, check_schedule, evaluate
from ..optimizer import Rule, TorchPeer
from .common import effective_gradient

__all__ = ["Adam", "AdamW", "AMSGrad", "AdamScalars", "adam_kernel"]


class AdamScalars(NamedTuple):
    """Host scalars of one Adam step: flags (bools) fix the kernel's branches, numbers
    become 0-d arrays of the compute dtype."""

    maximize: bool
    coupled_decay: bool
    decoupled_decay: bool
    amsgrad: bool
    scaled_denominator: bool  # sqrt(v) / sqrt(1 - b2^t): bias-corrected, and eps added to sqrt(v-hat)
    weight_decay: float
    decay_factor: float
    beta1: float
    one_minus_beta1: float
    beta2: float
    one_minus_beta2: float
    step_size: float
    bias_correction2_sqrt: float
    eps: float


def adam_kernel(xp, s: AdamScalars, p, g, m, v, v_max=None):
    """One Adam step, elementwise, in this order (t = steps taken + 1)::

        g  <- -g                        if maximize
        g  <- g + wd * p                coupled L2 (Adam)
        p  <- p * (1 - lr * wd)         decoupled decay (AdamW)
        m  <- b1 * m + (1 - b1) * g
        v  <- b2 * v + (1 - b2) * (g * g)
        v_max <- maximum(v_max, v)      if amsgrad, and v_max replaces v below
        p  <- p - (lr / (1 - b1^t)) * (m / (sqrt(v) / sqrt(1 - b2^t) + eps))

    ``eps_hat=True``: ``p <- p - (lr * sqrt(1 - b2^t) / (1 - b1^t)) * (m / (sqrt(v) + eps))``;
    ``bias_correction=False``: ``p <- p - lr * (m / (sqrt(v) + eps))``.
    """
    g = effective_gradient(s, p, g)
    if s.decoupled_decay:
        p = p * s.decay_factor
    m = s.beta1 * m + s.one_minus_beta1 * g
    v = s.beta2 * v + s.one_minus_beta2 * (g * g)
    if s.amsgrad:
        v_max = xp.maximum(v_max, v)
        return p - s.step_size * (m / _denominator(xp, s, v_max)), m, v, v_max
    return p - s.step_size * (m / _denominator(xp, s, v)), m, v


def _denominator(xp, s: AdamScalars, v):
    """``sqrt(v) / sqrt(1 - b2^t) + eps``, or ``sqrt(v) + eps`` (eps_hat, or no bias correction)."""
    root = xp.sqrt(v)
    if s.scaled_denominator:
        root = root / s.bias_correction2_sqrt
    return root + s.eps


class Adam(Rule):
    """Adam with coupled L2 weight decay (``g + wd * p``), as torch.optim.Adam.

    ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g²``,
    ``p -= lr/(1-b1^t) · m / (sqrt(v)/sqrt(1-b2^t) + eps)``. Kingma & Ba (2015).
    ``eps_hat=True``: ``p -= lr·sqrt(1-b2^t)/(1-b1^t) · m / (sqrt(v) + eps)`` (Kingma & Ba §2's ε̂;
    Keras, TensorFlow). ``bias_correction=False``: ``p -= lr · m / (sqrt(v) + eps)`` (BERT; HF
    ``correct_bias=False``). Neither has a torch.optim peer.
    """

    name = "Adam"
    kernel = staticmethod(adam_kernel)
    torch_peer = TorchPeer("Adam")
    paper = "Kingma & Ba (2015), Adam: A Method for Stochastic Optimization"

    def __init__(
        self,
        lr: Hyperparameter = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: Hyperparameter = 1e-8,
        weight_decay: Hyperparameter = 0.0,
        amsgrad: bool = False,
        maximize: bool = False,
        skip_nonfinite: bool = False,
        decoupled_weight_decay: bool = False,
        state_dtype: str | None = None,
        master_weights: str | None = None,
        *,
        bias_correction: bool = True,
        eps_hat: bool = False,
    ) -> None:
        """``decoupled_weight_decay=True`` is AdamW's decay (as torch.optim.Adam's option)."""
        self.lr = check_schedule("lr", lr)
        self.betas = check_betas(betas)
        self.eps = check_schedule("eps", eps)
        self.weight_decay = check_schedule("weight_decay", weight_decay)
        self.amsgrad = check_flag("amsgrad", amsgrad)
        self.decoupled_weight_decay = check_flag("decoupled_weight_decay", decoupled_weight_decay)
        self.bias_correction = check_flag("bias_correction", bias_correction)
        self.eps_hat = check_flag("eps_hat", eps_hat)
        self._set_common(maximize, skip_nonfinite, state_dtype, master_weights)
        warn_if_beta1_too_large(self.betas)

    def slot_names(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq", "max_exp_avg_sq") if self.amsgrad else ("exp_avg", "exp_avg_sq")

    def host_scalars(self, steps_taken: int) -> AdamScalars:
        lr = evaluate("lr", self.lr, steps_taken)
        weight_decay = evaluate("weight_decay", self.weight_decay, steps_taken)
        beta1, beta2 = self.betas
        t = steps_taken + 1
        correction1, correction2_sqrt = 1.0 - power(beta1, t), math.sqrt(1.0 - power(beta2, t))
        if not self.bias_correction:
            step_size, correction2_sqrt = lr, 1.0
        elif self.eps_hat:
            step_size = lr * correction2_sqrt / correction1
        else:
            step_size = lr / correction1
        return AdamScalars(
            self.maximize,
            weight_decay != 0 and not self.decoupled_weight_decay,  # coupled_decay
            weight_decay != 0 and self.decoupled_weight_decay,  # decoupled_decay
            self.amsgrad,
            self.bias_correction and not self.eps_hat,  # scaled_denominator
            weight_decay,
            1.0 - lr * weight_decay,  # decay_factor
            beta1,
            1.0 - beta1,
            beta2,
            1.0 - beta2,
            step_size,
            correction2_sqrt,  # bias_correction2_sqrt
            evaluate("eps", self.eps, steps_taken),
        )


class AdamW(Adam):
    """Adam with decoupled weight decay ``p *= 1 - lr*wd`` before the Adam step.

    Loshchilov & Hutter (2019); as torch.optim.AdamW (default weight_decay 1e-2).
    """

    name = "AdamW"
    torch_peer = TorchPeer("AdamW")
    paper = "Loshchilov & Hutter (2019), Decoupled Weight Decay Regularization"

    def __init__(
        self,
        lr: Hyperparameter = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: Hyperparameter = 1e-8,
        weight_decay: Hyperparameter = 1e-2,
        amsgrad: bool = False,
        maximize: bool = False,
        skip_nonfinite: bool = False,
        state_dtype: str | None = None,
        master_weights: str | None = None,
        *,
        bias_correction: bool = True,
        eps_hat: bool = False,
    ) -> None:
        super().__init__(lr, betas, eps, weight_decay, amsgrad, maximize, skip_nonfinite, True, state_dtype,
                         master_weights, bias_correction=bias_correction, eps_hat=eps_hat)


class AMSGrad(Adam):
    """Adam keeping ``v_max = max(v_max, v)`` in place of ``v`` (Reddi et al. 2018).

    Identical to ``Adam(amsgrad=True)``, bias-corrected as torch.optim.Adam does.
    """

    name = "AMSGrad"
    torch_peer = TorchPeer("Adam", {"amsgrad": True})
    paper = "Reddi, Kale & Kumar (2018), On the Convergence of Adam and Beyond"

    def __init__(
        self,
        lr: Hyperparameter = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: Hyperparameter = 1e-8,
        weight_decay: Hyperparameter = 0.0,
        maximize: bool = False,
        skip_nonfinite: bool = False,
        state_dtype: str | None = None,
        master_weights: str | None = None,
        *,
        bias_correction: bool = True,
        eps_hat: bool = False,
    ) -> None:
        super().__init__(lr, betas, eps, weight_decay, True, maximize, skip_nonfinite, state_dtype=state_dtype,
                         master_weights=master_weights, bias_correction=bias_correction, eps_hat=eps_hat)

