"""The public API every rule shares: ``init``, ``update`` (pure) and ``step`` (in place).

A rule supplies three things: its slot names, its host scalars for a step (Python floats),
and one elementwise ``kernel(xp, s, p, g, *slots) -> (p, *slots)``. This module does the
rest, the same way for every rule and backend: checks, dtype handling, scalar
materialisation, and writing the results.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Mapping, Sequence

from portopt.backends import Adapter, adapter_for

from .checks import Leaves, check_grads, check_params, check_state
from .numerics import RuleNamespace, Scalars, compute_dtype, materialise
from .state import State
from .trees import unflatten

__all__ = ["Rule"]


class Rule:
    """Base class of the update rules (Adam, AdamW, AMSGrad, AdaGrad, RMSProp, ...)."""

    name: ClassVar[str]
    kernel: ClassVar[Callable[..., tuple]]

    # --- what each rule defines -------------------------------------------------------
    def slot_names(self) -> tuple[str, ...]:
        """Names of the per-parameter state arrays, in the kernel's argument order."""
        raise NotImplementedError

    def slot_initial_value(self, slot: str) -> float:
        """The value every slot array starts with."""
        return 0.0

    def host_scalars(self, steps_taken: int) -> dict[str, float | bool]:
        """Scalars of the step after ``steps_taken`` steps, in Python floats (and bool flags)."""
        raise NotImplementedError

    def hyperparameters(self) -> dict[str, Any]:
        """Constructor arguments, as given (schedules stay callables)."""
        raise NotImplementedError

    # --- the shared API ---------------------------------------------------------------
    def init(self, params: Any) -> State:
        """A fresh state for ``params`` (one array or a dict/list/tuple tree of arrays)."""
        checked = check_params(params)
        slots = {}
        for slot in self.slot_names():
            value = self.slot_initial_value(slot)
            slots[slot] = unflatten(
                checked.treedef,
                [
                    checked.xp.full(p.shape, value, dtype=compute_dtype(checked.xp, p.dtype), device=checked.device)
                    for p in checked.leaves
                ],
            )
        return State(rule=self.name, step=0, slots=slots)

    def update(self, params: Any, grads: Any, state: State) -> tuple[Any, State]:
        """One step, pure: returns ``(new_params, new_state)`` and mutates nothing."""
        plan = _StepPlan(self, params, grads, state)
        names = self.slot_names()
        new_params, new_slots = [], {name: [] for name in names}
        for index in range(len(plan.params.leaves)):
            p, slots = plan.compute(index)
            new_params.append(plan.xp.asarray(p))
            for name, value in zip(names, slots):
                new_slots[name].append(plan.xp.asarray(value))
        treedef = plan.params.treedef
        return unflatten(treedef, new_params), State(
            rule=self.name,
            step=state.step + 1,
            slots={name: unflatten(treedef, leaves) for name, leaves in new_slots.items()},
        )

    def step(self, params: Any, grads: Any, state: State) -> None:
        """One step in place: the results are written into ``params`` and ``state``.

        Everything is checked and every host scalar evaluated before the first write, so
        bad input leaves params and state as they were. Bit-identical to :meth:`update`.
        """
        self.plan_step(params, grads, state).apply()

    def plan_step(self, params: Any, grads: Any, state: State) -> "_StepPlan":
        """Check an in-place step and evaluate its scalars; ``.apply()`` then writes it.

        Lets a caller with several groups (the torch drop-in) check them all before
        writing any.
        """
        return _StepPlan(self, params, grads, state, writing=True)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


class _StepPlan:
    """Everything one step needs, checked: leaves, namespace, scalars per compute dtype."""

    def __init__(self, rule: Rule, params: Any, grads: Any, state: State, *, writing: bool = False) -> None:
        self.rule = rule
        self.state = state
        self.params: Leaves = check_params(params)
        self.grads = check_grads(grads, self.params)
        self.slots = check_state(state, rule.name, rule.slot_names(), self.params)
        self.xp = self.params.xp
        self.adapter: Adapter | None = adapter_for(self.xp) if self.xp is not None else None
        if writing:
            self._check_writeable()
        self.host_values: Mapping[str, float | bool] = rule.host_scalars(state.step)
        self._scalars: dict[Any, Scalars] = {}
        self.namespace: RuleNamespace | None = (
            self.adapter.rule_namespace(self.params.device) if self.adapter else None
        )

    def _check_writeable(self) -> None:
        for path, p in zip(self.params.paths, self.params.leaves):
            if not self.adapter.is_writeable(p):
                raise TypeError(
                    f"params{path} is read-only ({self.adapter.label(self.params.device)}); "
                    "use update(), which returns new arrays"
                )
        for name, leaves in self.slots.items():
            for path, x in zip(self.params.paths, leaves):
                if not self.adapter.is_writeable(x):
                    raise TypeError(f"state.slots[{name!r}]{path} is read-only; use update()")

    def apply(self) -> None:
        """Compute each leaf and write it into the params and the state, then count the step."""
        names = self.rule.slot_names()
        for index, p in enumerate(self.params.leaves):
            new_p, new_slots = self.compute(index)
            self.adapter.write(p, new_p)
            for name, value in zip(names, new_slots):
                self.adapter.write(self.slots[name][index], value)
        self.state.step += 1

    def scalars(self, dtype: Any) -> Scalars:
        if dtype not in self._scalars:
            self._scalars[dtype] = materialise(self.xp, self.host_values, dtype, self.params.device)
        return self._scalars[dtype]

    def compute(self, index: int) -> tuple[Any, Sequence[Any]]:
        """New parameter (in its own dtype) and new slots (compute dtype) of leaf ``index``."""
        xp = self.xp
        p, g = self.params.leaves[index], self.grads[index]
        dtype = compute_dtype(xp, p.dtype)
        if dtype != p.dtype:
            p, g = xp.astype(p, dtype), xp.astype(g, dtype)
        slots = [self.slots[name][index] for name in self.rule.slot_names()]
        new_p, *new_slots = type(self.rule).kernel(self.namespace, self.scalars(dtype), p, g, *slots)
        original_dtype = self.params.leaves[index].dtype
        if new_p.dtype != original_dtype:
            new_p = xp.astype(new_p, original_dtype)
        return new_p, new_slots
