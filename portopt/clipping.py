"""Deterministic clipping, the gradient transforms, and ``chain``: a rule stepped with
transformed gradients (``Clipped`` is the chain of a global-norm clip and a rule)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .checks import check_params
from .fast.norms import sum_of_squares
from .hyperparams import check_real
from .numerics import compute_dtype, dtype_name, host_dtype
from .optimizer import Rule
from .state import State
from .trees import unflatten

__all__ = ["global_norm", "clip_by_global_norm", "clipped_leaves", "Clipped", "Chain", "chain", "ClipByGlobalNorm",
           "ClipByValue", "GradientTransform"]


def global_norm(grads: Any) -> Any:
    """``sqrt(sum of g² over every element of the tree)``, a 0-d array, with the same bits on
    every backend: squares and sums in the order of :mod:`portopt.reductions`, a correctly
    rounded sqrt. float64 if any leaf is float64, else float32."""
    return _norm_of(check_params(grads))


def _norm_of(checked: Any) -> Any:
    """:func:`global_norm` of checked leaves."""
    if not checked.leaves:
        raise ValueError("grads is an empty tree; its norm is undefined")
    from portopt.backends import adapter_for

    xp = checked.xp
    namespace = adapter_for(xp).rule_namespace(checked.device)
    return namespace.sqrt(sum_of_squares(xp, checked.leaves, norm_dtype(xp, checked.leaves)))


def clip_by_global_norm(grads: Any, max_norm: float, eps: float = 1e-6) -> tuple[Any, Any]:
    """Scale ``grads`` by ``min(1, max_norm / (norm + eps))``; returns ``(clipped, norm)``.

    As ``torch.nn.utils.clip_grad_norm_`` (which adds 1e-6 too), but with the norm of
    :func:`global_norm`, so every backend clips by the same factor. The factor is computed
    in the norm's dtype and applied to each leaf in its compute dtype.
    """
    max_norm = check_real("max_norm", max_norm)
    eps = check_real("eps", eps)
    checked = check_params(grads)
    norm = _norm_of(checked)
    factor = clip_factor(checked.xp, norm, max_norm, eps, checked.device)
    clipped = [scale_by(checked.xp, g, factor) for g in checked.leaves]
    return unflatten(checked.treedef, clipped), norm


def clip_by_global_norm_(grads: Any, max_norm: float, eps: float = 1e-6) -> Any:
    """:func:`clip_by_global_norm` in place: every gradient array is scaled in its own memory
    (the same bits) and the norm returned, as ``torch.nn.utils.clip_grad_norm_`` does for a
    model's gradients, on any backend with writeable arrays. Every array is checked (writeable,
    none sharing memory with another) before any is written; a KeyboardInterrupt waits for the
    writes."""
    from portopt.backends import adapter_for

    from .plan import _check_no_shared_memory, _check_writeable, interrupts_deferred

    max_norm = check_real("max_norm", max_norm)
    eps = check_real("eps", eps)
    checked = check_params(grads)
    xp, adapter = checked.xp, adapter_for(checked.xp)
    _check_writeable(adapter, checked, {}, "grads", "use clip_by_global_norm(), which returns new arrays")
    _check_no_shared_memory(adapter, checked, {}, "grads")
    norm = _norm_of(checked)
    factor = clip_factor(xp, norm, max_norm, eps, checked.device)
    if bool(factor == 1):
        return norm  # g * 1 is g, bit for bit: nothing to write
    same = {dtype: xp.astype(factor, dtype) for dtype in {g.dtype for g in checked.leaves}
            if compute_dtype(xp, dtype) == dtype}  # the factor in each dtype computed in as it is
    widened = [None if g.dtype in same else scale_by(xp, g, factor) for g in checked.leaves]  # before any write
    with interrupts_deferred(True):
        for g, scaled in zip(checked.leaves, widened):
            if scaled is None:
                adapter.multiply_into(g, same[g.dtype])
            else:
                adapter.write(g, scaled)
    return norm


def clip_factor(xp: Any, norm: Any, max_norm: float, eps: float, device: Any) -> Any:
    """``min(1, max_norm / (norm + eps))`` in the norm's dtype, a 0-d array.

    A norm in host memory is computed with on the host, in NumPy scalars of its dtype (the
    same IEEE operations, without a dozen tiny array operations); elsewhere with ``xp``.
    """
    from portopt.backends import adapter_for

    adapter = adapter_for(xp)
    if adapter.name == "numpy":  # host memory already; host_clip_factor's result is a new array
        return host_clip_factor(np.asarray(norm), max_norm, eps)
    if adapter.address(norm) is not None:
        return adapter.from_numpy(host_clip_factor(adapter.to_numpy(norm), max_norm, eps), device)
    factor = xp.asarray(max_norm, dtype=norm.dtype, device=device) / (norm + xp.asarray(eps, dtype=norm.dtype, device=device))
    one = xp.asarray(1.0, dtype=norm.dtype, device=device)
    return xp.where(factor < one, factor, one)


def host_clip_factor(norm: np.ndarray, max_norm: float, eps: float) -> np.ndarray:
    """:func:`clip_factor` of a norm in host memory, in NumPy scalars of its dtype (a 0-d array)."""
    dtype = norm.dtype.type
    factor = dtype(max_norm) / (norm + dtype(eps))
    return np.asarray(factor if factor < dtype(1.0) else dtype(1.0), dtype=norm.dtype)


def scale_by(xp: Any, g: Any, factor: Any) -> Any:
    """``g * factor`` rounded in ``g``'s compute dtype, returned in ``g``'s dtype."""
    dtype = compute_dtype(xp, g.dtype)
    wide = g if g.dtype == dtype else xp.astype(g, dtype)  # astype would copy a g of that dtype
    scaled = wide * (factor if factor.dtype == dtype else xp.astype(factor, dtype))
    return scaled if scaled.dtype == g.dtype else xp.astype(scaled, g.dtype)


def norm_dtype(xp: Any, leaves: list) -> Any:
    """float64 if any leaf computes in float64, else float32."""
    dtypes = [compute_dtype(xp, leaf.dtype) for leaf in leaves]
    return xp.float64 if xp.float64 in dtypes else xp.float32


def clipped_leaves(xp: Any, namespace: Any, leaves: list, max_norm: float, eps: float, device: Any) -> list:
    """``leaves`` scaled by ``min(1, max_norm / (norm + eps))``, the norm of :func:`global_norm`
    computed in ``namespace`` (the rules' correctly rounded one)."""
    if not leaves:
        return leaves
    norm = namespace.sqrt(sum_of_squares(xp, leaves, norm_dtype(xp, leaves)))
    factor = clip_factor(xp, norm, max_norm, eps, device)
    return [xp.asarray(scale_by(xp, g, factor)) for g in leaves]  # NumPy makes 0-d results scalars


class ClipByGlobalNorm:
    """A gradient transform for :func:`chain`: the leaves scaled by ``min(1, max_norm / (norm +
    eps))``, the norm of :func:`global_norm` (as :func:`clip_by_global_norm`)."""

    def __init__(self, max_norm: float, eps: float = 1e-6) -> None:
        self.max_norm = check_real("max_norm", max_norm)
        self.eps = check_real("eps", eps)

    def __call__(self, plan: Any, grads: list) -> list:
        return clipped_leaves(plan.xp, plan.namespace, grads, self.max_norm, self.eps, plan.device)

    def __repr__(self) -> str:
        return f"ClipByGlobalNorm({self.max_norm!r}, eps={self.eps!r})"


class ClipByValue:
    """A gradient transform for :func:`chain`: each element clipped to ``[-limit, limit]``
    (exact: comparisons and where; NaN stays NaN)."""

    def __init__(self, limit: float) -> None:
        self.limit = check_real("limit", limit)
        if not self.limit >= 0:
            raise ValueError(f"limit must be >= 0, got {limit!r}")

    def __call__(self, plan: Any, grads: list) -> list:
        xp, device = plan.xp, plan.device
        clipped = []
        for g in grads:
            high = xp.asarray(self._limit_in(dtype_name(xp, g.dtype)), dtype=g.dtype, device=device)
            clipped.append(xp.asarray(xp.where(g > high, high, xp.where(g < -high, -high, g))))
        return clipped

    def _limit_in(self, name: str) -> float:
        """The limit in dtype ``name``, rounded towards zero: no clipped value exceeds ``limit``."""
        dtype = host_dtype(name)
        value = np.asarray(self.limit).astype(dtype)
        if float(value) > self.limit:
            value = np.nextafter(value, np.asarray(0, dtype=dtype))
        return float(value)

    def __repr__(self) -> str:
        return f"ClipByValue({self.limit!r})"


GradientTransform = Callable[[Any, list], list]  # (plan, gradient leaves) -> new gradient leaves


class Chain(Rule):
    """``rule`` stepped with the gradients the ``transforms`` make, applied in order.

    Same state as ``rule`` (its name included, so checkpoints stay interchangeable). The
    inputs are checked as ``rule`` checks them, then the gradients are transformed.
    """

    def __init__(self, *transforms: GradientTransform, rule: Rule) -> None:
        if not isinstance(rule, Rule):
            raise TypeError(f"rule must be a portopt rule, got {type(rule).__name__}")
        for index, transform in enumerate(transforms):
            if not callable(transform):
                raise TypeError(f"transforms[{index}] must be a gradient transform (ClipByGlobalNorm, "
                                f"ClipByValue, ...), got {type(transform).__name__}")
        if isinstance(rule, Chain):  # chain(a, chain(b, rule)) is chain(a, b, rule)
            transforms, rule = (*transforms, *rule.transforms), rule.rule
        self.transforms: tuple[GradientTransform, ...] = tuple(transforms)
        self.rule: Rule = rule
        self.name = rule.name
        self.skip_nonfinite = rule.skip_nonfinite
        self.state_dtype = rule.state_dtype
        self.master_weights = rule.master_weights

    def hyperparameters(self) -> dict[str, Any]:
        return self.rule.hyperparameters()

    def slot_names(self) -> tuple[str, ...]:
        return self.rule.slot_names()

    def slot_initial_value(self, slot: str) -> float:
        return self.rule.slot_initial_value(slot)

    def slot_dtype(self, xp: Any, param_dtype: Any) -> Any:
        return self.rule.slot_dtype(xp, param_dtype)

    def host_scalars(self, steps_taken: int) -> Any:
        return self.rule.host_scalars(steps_taken)

    def init(self, params: Any) -> State:
        return self.rule.init(params)

    def prepared(self, params: Any, grads: Any, state: State, *, writing: bool, evaluated: tuple | None = None,
                 transform: Any = None) -> Any:
        """The rule's prepared step with this chain's transforms (then ``transform``, if given)."""
        transforms = self._transform if transform is None else lambda plan, g: transform(plan, self._transform(plan, g))
        return self.rule.prepared(params, grads, state, writing=writing, evaluated=evaluated, transform=transforms)

    def evaluate_schedules(self, state: Any) -> tuple | None:
        return self.rule.evaluate_schedules(state)  # the step evaluates its rule's scalars

    def lane_parts(self) -> tuple[Rule, Any]:
        return self.rule, self._transform

    def _transform(self, plan: Any, grads: list) -> list:
        for transform in self.transforms:
            grads = transform(plan, grads)
        return grads

    def __repr__(self) -> str:
        return f"chain({', '.join(map(repr, (*self.transforms, self.rule)))})"


def chain(*transforms_then_rule: Any) -> Chain:
    """``chain(t1, t2, ..., rule)``: ``rule`` stepped with ``t2(t1(grads))``; e.g.
    ``chain(ClipByGlobalNorm(1.0), Adam())`` is ``Clipped(Adam(), 1.0)``, bit for bit."""
    if not transforms_then_rule:
        raise TypeError("chain needs a rule as its last argument")
    *transforms, rule = transforms_then_rule
    return Chain(*transforms, rule=rule)


class Clipped(Chain):
    """``rule`` applied to gradients clipped by :func:`clip_by_global_norm` first:
    ``chain(ClipByGlobalNorm(max_norm), rule)``, with ``max_norm`` among its hyperparameters."""

    def __init__(self, rule: Rule, max_norm: float) -> None:
        super().__init__(ClipByGlobalNorm(max_norm), rule=rule)
        self.max_norm = self.transforms[0].max_norm  # type: ignore[attr-defined]

    def hyperparameters(self) -> dict[str, Any]:
        return {**self.rule.hyperparameters(), "max_norm": self.max_norm}

    def __repr__(self) -> str:
        return f"Clipped({self.rule!r}, max_norm={self.max_norm!r})"
