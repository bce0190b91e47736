"""Gradient accumulation: ``MultiSteps(rule, k)`` steps ``rule`` on every k-th call with the
mean of the k gradients, ``(((g1 + g2) + g3) + ...) / k``, summed in call order and divided
once, and leaves the params unchanged on the calls in between (as optax.MultiSteps).

It is one rule: its kernel is the accumulation followed by ``rule``'s kernel, so it runs on
every executor and fast path, gives the same bits on every backend, and its state is a
plain :class:`portopt.State` (``rule``'s slots plus ``accumulated``). The sum and the mean
are computed in the compute dtype (float32 for 16-bit params) and the rule steps on that mean
directly: for float32/float64 params this is exactly one ``rule`` step on the mean; for
16-bit params it is one rounding fewer than a step on a mean rounded to float16. The
``accumulated`` slot is kept in the state's dtype like every slot: with the rule's
``state_dtype`` narrower than the compute dtype, the running sum is rounded to it between calls.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

from .hyperparams import check_flag
from .optimizer import Rule

__all__ = ["MultiSteps"]

_OWN_FIELDS = (("accumulation_first", bool), ("accumulation_last", bool))
_COUNT_FIELD = ("accumulation_count", float)


@functools.cache
def _scalars_type(inner: Any) -> Any:
    """The inner rule's host-scalars NamedTuple with the accumulation's flags and count added."""
    from typing import get_type_hints

    hints = get_type_hints(inner)
    fields = [*_OWN_FIELDS, *((name, hints[name]) for name in inner._fields), _COUNT_FIELD]
    return NamedTuple(f"MultiSteps{inner.__name__}", fields)


@functools.cache
def _kernel(inner_kernel: Callable[..., tuple], inner_scalars: Any) -> Callable[..., tuple]:
    """``total <- g`` on a cycle's first call, else ``accumulated + g``; on its last call
    ``mean <- total / k`` and ``inner_kernel`` steps with it; params and the inner slots are
    unchanged on the other calls."""
    start, stop = len(_OWN_FIELDS), len(_OWN_FIELDS) + len(inner_scalars._fields)

    def multisteps_kernel(xp, s, p, g, *slots):
        *inner_slots, accumulated = slots
        total = g if s.accumulation_first else accumulated + g
        if not s.accumulation_last:
            return (p, *inner_slots, total)
        mean = total / s.accumulation_count
        return (*inner_kernel(xp, inner_scalars(*s[start:stop]), p, mean, *inner_slots), mean)

    multisteps_kernel.__qualname__ = f"multisteps_kernel[{getattr(inner_kernel, '__qualname__', inner_kernel)}]"
    return multisteps_kernel


class MultiSteps(Rule):
    """``rule`` stepped every ``k``-th call with the mean of the ``k`` accumulated gradients.

    ``k`` calls of ``update``/``step`` make one step of ``rule``: the first ``k - 1`` only add
    their gradients to the ``accumulated`` slot (params unchanged), the ``k``-th adds its own,
    divides by ``k`` once and steps. ``state.step`` counts calls; ``rule``'s step count is
    ``state.step // k``. A call skipped by ``skip_nonfinite`` does not count.
    """

    def __init__(self, rule: Rule, k: int) -> None:
        if not isinstance(rule, Rule) or "kernel" not in dir(type(rule)) or isinstance(rule, MultiSteps):
            raise TypeError(f"rule must be one of portopt's rules (not Clipped, chain or MultiSteps: accumulate "
                            f"first, then clip), got {type(rule).__name__}")
        if type(rule).host_state_uses_gradients:
            raise TypeError(f"MultiSteps cannot accumulate for {rule.name}: its whole-tree state needs the mean "
                            "gradient before the step")
        if rule.master_weights == "split":
            raise TypeError("MultiSteps cannot accumulate for a rule with master_weights='split' yet (its step is "
                            "the float32 master's, not one kernel); use master_weights='kahan' or float32 params")
        if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
            raise ValueError(f"k must be an int >= 1, got {k!r}")
        self.rule: Rule = rule
        self.k: int = int(k)
        self.name = f"MultiSteps({rule.name})"
        self.maximize = check_flag("maximize", rule.maximize)
        self.skip_nonfinite = rule.skip_nonfinite
        self.state_dtype = rule.state_dtype
        self.__dict__["schedulable"] = rule.schedulable  # the inner rule's (a class variable elsewhere)
        inner_scalars: Any = type(rule.host_scalars(0))
        self._scalars: Any = _scalars_type(inner_scalars)
        self.kernel = _kernel(rule.kernel, inner_scalars)

    def hyperparameters(self) -> dict[str, Any]:
        return {**self.rule.hyperparameters(), "k": self.k}

    def slot_names(self) -> tuple[str, ...]:
        return (*self.rule.slot_names(), "accumulated")

    def slot_initial_value(self, slot: str) -> float:
        return 0.0 if slot == "accumulated" else self.rule.slot_initial_value(slot)

    def slot_dtype(self, xp: Any, param_dtype: Any) -> Any:
        return self.rule.slot_dtype(xp, param_dtype)

    def initial_host_state(self) -> dict[str, float]:
        return self.rule.initial_host_state()

    def host_state_names(self) -> tuple[str, ...]:
        return self.rule.host_state_names()

    def restore_host_state(self, step: int, host: dict[str, float]) -> dict[str, float]:
        return self.rule.restore_host_state(step // self.k, host)

    def host_scalars(self, steps_taken: int) -> Any:
        position = steps_taken % self.k
        inner = self.rule.host_scalars(steps_taken // self.k)
        return self._scalars(position == 0, position == self.k - 1, *inner, float(self.k))

    def advance_host_state(self, steps_taken: int, host: dict[str, float], xp: Any, grads: Sequence,
                           params: Sequence) -> tuple[dict[str, float], dict[str, float]]:
        if steps_taken % self.k != self.k - 1:
            return {}, host
        return self.rule.advance_host_state(steps_taken // self.k, host, xp, grads, params)

    def load_state_dict(self, state_dict: dict[str, Any], like: Any) -> Any:
        """As every rule's, but a checkpoint saved with another ``k`` is refused: its step count
        and accumulated sum mean something else under another ``k``."""
        from .checkpoint import CheckpointError

        saved = state_dict.get("hyperparameters") if isinstance(state_dict, dict) else None
        if isinstance(saved, dict) and "k" in saved and saved["k"] != self.k:
            raise CheckpointError(f"state_dict was saved by MultiSteps with k={saved['k']!r}, this one has "
                                  f"k={self.k}; a cycle's position and sum do not carry over")
        return super().load_state_dict(state_dict, like)

    def __reduce__(self) -> tuple:
        return (MultiSteps, (self.rule, self.k))

    def __repr__(self) -> str:
        return f"MultiSteps({self.rule!r}, k={self.k})"
