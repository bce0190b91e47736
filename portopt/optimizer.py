"""The public API every rule shares: ``init``, ``update`` (pure) and ``step`` (in place).

A rule supplies three things: its slot names, its host scalars for a step (Python floats),
and one elementwise ``kernel(xp, s, p, g, *slots) -> (p, *slots)``. This module does the
rest, the same way for every rule and backend: checks, dtype handling, scalar
materialisation, and writing the results.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, ClassVar, Mapping, Sequence

import array_api_compat

from portopt.backends import Adapter, adapter_for

from . import fast
from .checkpoint import STATE_FORMAT, CheckpointError, tree_from_json, tree_to_json
from .checks import Leaves, check_grads, check_params, check_state
from .hyperparams import STANDARD, evaluate
from .numerics import RuleNamespace, Scalars, compute_dtype, dtype_name, materialise
from .state import State
from .trees import flatten, unflatten

__all__ = ["Rule"]


class Rule:
    """Base class of the update rules (Adam, AdamW, AMSGrad, AdaGrad, RMSProp, ...)."""

    name: ClassVar[str]
    kernel: ClassVar[Callable[..., tuple]]
    skip_nonfinite: bool = False

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
        """Constructor arguments by name, as stored (schedules stay callables)."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return {name: getattr(self, name) for name in names}

    def _set_standard(self, **values: Any) -> None:
        """Check and store the hyperparameters every rule spells the same way (see STANDARD)."""
        for name, value in values.items():
            setattr(self, name, STANDARD[name](name, value))

    def gradient_scalars(self, steps_taken: int) -> dict[str, Any]:
        """Host scalars of :func:`portopt.rules.common.effective_gradient`: maximize and coupled decay."""
        weight_decay = evaluate("weight_decay", getattr(self, "weight_decay", 0.0), steps_taken)
        return dict(maximize=self.maximize, coupled_decay=weight_decay != 0, weight_decay=weight_decay)

    def initial_host_state(self) -> dict[str, float]:
        """Whole-tree state kept on the host (see State.host); most rules have none."""
        return {}

    def advance_host_state(self, steps_taken: int, host: dict[str, float], xp: Any, grads: list,
                           params: list) -> tuple[dict[str, float], dict[str, float]]:
        """Extra host scalars for this step and the new host state, from the gradients if needed."""
        return {}, host

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
        return State(rule=self.name, step=0, slots=slots, host=self.initial_host_state())

    def update(self, params: Any, grads: Any, state: State) -> tuple[Any, State]:
        """One step, pure: returns ``(new_params, new_state)`` and mutates nothing."""
        plan = _StepPlan(self, params, grads, state)
        if plan.skip:
            return params, State(rule=self.name, step=state.step, slots=dict(state.slots), skipped=state.skipped + 1,
                                 host=dict(state.host))
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
            skipped=state.skipped,
            host=plan.new_host,
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

    # --- checkpoints -------------------------------------------------------------------
    def state_dict(self, state: State) -> dict[str, Any]:
        """``state`` as plain data: NumPy arrays and Python scalars, on no backend.

        ``{"format", "rule", "hyperparameters", "step", "skipped", "tree", "slots": {name:
        [array per leaf]}}``; :func:`portopt.save` writes it to a file.
        """
        if not isinstance(state, State) or state.rule != self.name:
            raise ValueError(f"state must be a State of {self.name}, got {getattr(state, 'rule', type(state).__name__)}")
        names = self.slot_names()
        if set(state.slots) != set(names):
            raise ValueError(f"state has slots {sorted(state.slots)}, this {self.name} needs {sorted(names)}")
        treedef = flatten(state.slots[names[0]])[1] if names else None  # a rule without slots (plain SGD)
        slots = {}
        for name in names:
            leaves = flatten(state.slots[name])[0]
            slots[name] = [
                adapter_for(array_api_compat.array_namespace(x)).to_numpy(x) for x in leaves
            ]
        return {
            "format": STATE_FORMAT, "rule": self.name, "hyperparameters": self.hyperparameters(),
            "step": state.step, "skipped": state.skipped, "host": dict(state.host),
            "tree": tree_to_json(treedef) if treedef is not None else None, "slots": slots,
        }

    def load_state_dict(self, state_dict: dict[str, Any], like: Any) -> State:
        """A State from :meth:`state_dict` data, on the backend, device and dtypes of ``like``.

        Checks the format, the rule, the slots, the tree and every array's shape and dtype
        against ``like`` (the params) before converting anything.
        """
        checked = check_params(like)
        found = state_dict.get("format") if isinstance(state_dict, dict) else type(state_dict).__name__
        if found != STATE_FORMAT:
            raise CheckpointError(f"state_dict has format {found!r}, expected {STATE_FORMAT!r}")
        if state_dict["rule"] != self.name:
            raise CheckpointError(f"state_dict is a {state_dict['rule']} state, not {self.name}")
        names = self.slot_names()
        if set(state_dict["slots"]) != set(names):
            raise CheckpointError(f"state_dict has slots {sorted(state_dict['slots'])}, this {self.name} needs "
                                  f"{sorted(names)}; was it saved with other options?")
        if state_dict["tree"] is not None and tree_from_json(state_dict["tree"]) != checked.treedef:
            raise CheckpointError(f"state_dict's tree {tree_from_json(state_dict['tree']).describe()} differs from "
                                  f"like's {checked.treedef.describe()}")
        step, skipped, host = state_dict["step"], state_dict.get("skipped", 0), dict(state_dict.get("host", {}))
        if set(host) != set(self.initial_host_state()) or not all(isinstance(v, float) for v in host.values()):
            raise CheckpointError(f"state_dict's host state {host!r} does not fit {self.name}")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise CheckpointError(f"state_dict's step must be an int >= 0, got {step!r}")
        for name in names:
            arrays = state_dict["slots"][name]
            if len(arrays) != len(checked.leaves):
                raise CheckpointError(f"state_dict slot {name!r} has {len(arrays)} arrays, like has {len(checked.leaves)}")
            for path, array, p in zip(checked.paths, arrays, checked.leaves):
                want = dtype_name(checked.xp, compute_dtype(checked.xp, p.dtype))
                if tuple(array.shape) != tuple(p.shape) or array.dtype.name != want:
                    raise CheckpointError(f"state_dict slot {name!r}{path} is {array.dtype.name}{tuple(array.shape)}, "
                                          f"like{path} needs {want}{tuple(p.shape)}")
        adapter = adapter_for(checked.xp) if checked.xp is not None else None
        slots = {
            name: unflatten(checked.treedef, [adapter.from_numpy(a, checked.device) for a in state_dict["slots"][name]])
            for name in names
        }
        return State(rule=self.name, step=step, slots=slots, skipped=skipped, host=host)

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
        self.slots = check_state(state, rule.name, rule.slot_names(), self.params, tuple(rule.initial_host_state()))
        self.xp = self.params.xp
        self.adapter: Adapter | None = adapter_for(self.xp) if self.xp is not None else None
        if writing:
            self._check_writeable()
        self.skip = rule.skip_nonfinite and not self._all_finite()
        extra, self.new_host = ({}, dict(state.host)) if self.skip else rule.advance_host_state(
            state.step, dict(state.host), self.xp, self.grads, self.params.leaves)
        self.host_values: Mapping[str, float | bool] = {**rule.host_scalars(state.step), **extra}
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

    def _all_finite(self) -> bool:
        """Whether every gradient element is finite (an exact boolean reduction)."""
        xp = self.xp
        return all(bool(xp.all(xp.isfinite(g))) for g in self.grads)

    def apply(self) -> None:
        """Compute each leaf and write it into the params and the state, then count the step."""
        if self.skip:
            self.state.skipped += 1
            return
        names = self.rule.slot_names()
        fast_step = fast.FastStep(type(self.rule).kernel, self.host_values, self.adapter) if self.adapter else None
        for index, p in enumerate(self.params.leaves):
            slots = [self.slots[name][index] for name in names]
            if fast_step.run(compute_dtype(self.xp, p.dtype), p, self.grads[index], slots):
                continue
            new_p, new_slots = self.compute(index)
            self.adapter.write(p, new_p)
            for name, value in zip(names, new_slots):
                self.adapter.write(self.slots[name][index], value)
        self.state.host = self.new_host
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
