"""The public API every rule shares: ``init``, ``update`` (pure) and ``step`` (in place).

A rule supplies three things: its slot names, its host scalars for a step (a NamedTuple of
Python floats and bool flags), and one elementwise ``kernel(xp, s, p, g, *slots) -> (p,
*slots)``. This module does the rest, the same way for every rule and backend: checks
(once per tree signature, see :mod:`portopt.plan`), dtype handling, scalar
materialisation, and writing the results.
"""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import array_api_compat
import numpy as np

from portopt.backends import adapter_for

from .checkpoint import STATE_FORMAT, CheckpointError, tree_from_json, tree_to_json
from .checks import check_params
from .compensation import COMPENSATION_SLOT, kahan_kernel
from .hyperparams import check_flag, check_master_weights, check_state_dtype, evaluate
from .numerics import dtype_name, slot_dtype_for
from .plan import (
    Plan,
    ScalarCache,
    TracedInputs,
    evaluate_first,
    fresh_result,
    interrupts_deferred,
    plan_for,
    prepare_repeat,
    repeat_update,
    run_group,
    step_scalars,
    transformed_grads,
)
from .split_master import SPLIT_SLOT, SplitStep, check_split_params, inner_state, low_bits_dtype, master_rule
from .state import State, is_traced, register_pytree
from .trees import flatten, unflatten

__all__ = ["Rule", "TorchPeer", "PreparedStep", "CheckpointWarning", "MASTER_WEIGHT_SLOTS"]

# the slot each master_weights option adds to a rule's own
MASTER_WEIGHT_SLOTS = {"kahan": COMPENSATION_SLOT, "split": SPLIT_SLOT}


def traceable(update: Callable[..., tuple[Any, State]]) -> Callable[..., tuple[Any, State]]:
    """``update`` that, while JAX traces it (``jax.jit(rule.update)``), runs
    :func:`portopt.jax.update` instead, and on concrete JAX arrays :func:`portopt.jax.eager_update`
    (the eager step with its kernel compiled guarded): on JAX arrays the plain path would lose
    the reference's bits (XLA fuses and rewrites its operations, eagerly inside one jnp call)."""

    @functools.wraps(update)
    def dispatching(self: Rule, params: Any, grads: Any, state: State) -> tuple[Any, State]:
        if self.master_weights == "split":  # the master's update between a join and a split
            if jax_takes(params, state):
                from .split_master import update_on_jax

                return update_on_jax(self, params, grads, state)
            return update(self, params, grads, state)
        if is_traced(getattr(state, "step", None)):
            return _traced_update(self, params, grads, state)
        if _eager_jax(params):
            from .jax import eager_update

            return eager_update(self, params, grads, state)
        try:
            return update(self, params, grads, state)
        except TracedInputs:  # traced params with a state from outside the trace
            return _traced_update(self, params, grads, state)

    return dispatching


def jax_takes(params: Any, state: Any) -> bool:
    """Whether :func:`traceable` sends this update to portopt.jax (a trace, or JAX arrays)."""
    return is_traced(getattr(state, "step", None)) or _eager_jax(params)


def _traced_update(rule: Rule, params: Any, grads: Any, state: State) -> tuple[Any, State]:
    from .jax import update

    return update(rule, params, grads, state)


def _eager_jax(params: Any) -> bool:
    """Whether the first leaf of ``params`` is a concrete JAX array (one dict lookup while jax
    is not imported; a tracer is not concrete)."""
    jax = sys.modules.get("jax")
    if jax is None:
        return False
    leaf = _first_leaf(params)
    return isinstance(leaf, jax.Array) and not isinstance(leaf, jax.core.Tracer)


def _first_leaf(tree: Any) -> Any:
    """The first leaf of a dict/list/tuple tree in tree order (as portopt.trees visits it), or
    None if it has none."""
    if not isinstance(tree, (dict, list, tuple)) or hasattr(tree, "_fields"):
        return tree
    for child in tree.values() if isinstance(tree, dict) else tree:
        leaf = _first_leaf(child)
        if leaf is not None:
            return leaf
    return None


@dataclass(frozen=True)
class TorchPeer:
    """The torch.optim class a rule computes the same math as, and the options that select it
    (AMSGrad is ``torch.optim.Adam(amsgrad=True)``)."""

    name: str
    options: Mapping[str, Any] = field(default_factory=dict)


class Rule:
    """Base class of the update rules (Adam, AdamW, AMSGrad, AdaGrad, RMSProp, ...).

    A rule is immutable once constructed: its hyperparameters were checked then, and a step
    relies on them. To change one, make a new rule, e.g.
    ``Adam(**{**rule.hyperparameters(), "lr": 0.01})``; a value that should change during
    training is a schedule (``lr=``, ``eps=``, ``weight_decay=`` take callables).
    """

    name: str  # set by each rule class (Clipped takes its rule's)
    kernel: Callable[..., tuple]  # a staticmethod of each rule class (MultiSteps: per instance)
    maximize: bool = False
    skip_nonfinite: bool = False
    state_dtype: str | None = None  # the state arrays' dtype (None: float32 for half-precision params)
    # "kahan": a compensation slot (portopt.compensation); "split": bfloat16 params and their
    # float32 master's low halves (portopt.split_master)
    master_weights: str | None = None
    # hyperparameters that may be schedules (callables of the steps taken), read at every step
    schedulable: ClassVar[tuple[str, ...]] = ("lr", "eps", "weight_decay")
    # the registry: what the exports, the drop-ins, the peers report and the tests read
    torch_peer: ClassVar[TorchPeer | None] = None  # the torch.optim peer, if torch has this rule
    paper: ClassVar[str] = ""  # where the math comes from
    # whether advance_host_state reads the gradients (AdaGradNorm's whole-tree norm)
    host_state_uses_gradients: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        names = cls.__dict__.get("slot_names")
        if names is not None:
            @functools.wraps(names)
            def with_option_buffer(self: Rule) -> tuple[str, ...]:
                own = names(self)
                extra = MASTER_WEIGHT_SLOTS.get(self.master_weights)  # type: ignore[arg-type]
                return own if extra is None else (*own, extra)

            cls.slot_names = with_option_buffer  # type: ignore[method-assign]
        init = cls.__dict__.get("__init__")
        if init is None:
            return

        @functools.wraps(init)
        def constructing(self: Rule, *args: Any, **kwargs: Any) -> None:
            depth = self.__dict__.get("_constructing", 0)
            self.__dict__["_constructing"] = depth + 1
            try:
                init(self, *args, **kwargs)
            finally:
                self.__dict__["_constructing"] = depth

        cls.__init__ = constructing  # type: ignore[assignment,method-assign]

    def __setattr__(self, name: str, value: Any) -> None:
        if not self.__dict__.get("_constructing"):
            raise AttributeError(
                f"{type(self).__name__} is immutable after construction (its hyperparameters were checked "
                f"there); make a new one, e.g. {type(self).__name__}(**{{**rule.hyperparameters(), "
                f"{name!r}: ...}}), or give a schedule where a value must change during training")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable after construction")

    # --- what each rule defines -------------------------------------------------------
    def slot_names(self) -> tuple[str, ...]:
        """Names of the per-parameter state arrays, in the kernel's argument order."""
        raise NotImplementedError

    def slot_initial_value(self, slot: str) -> float:
        """The value every slot array starts with."""
        return 0.0

    def host_scalars(self, steps_taken: int) -> Any:
        """Scalars of the step after ``steps_taken`` steps: the rule's NamedTuple of Python
        floats and bool flags (the flags fix the kernel's branches)."""
        raise NotImplementedError

    def hyperparameters(self) -> dict[str, Any]:
        """Constructor arguments by name, as stored (schedules stay callables)."""
        names = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        return {name: getattr(self, name) for name in names}

    def _set_common(self, maximize: bool, skip_nonfinite: bool, state_dtype: str | None = None,
                    master_weights: str | None = None) -> None:
        """Check and store the options every rule has."""
        self.maximize = check_flag("maximize", maximize)
        self.skip_nonfinite = check_flag("skip_nonfinite", skip_nonfinite)
        self.state_dtype = check_state_dtype(state_dtype)
        self.master_weights = check_master_weights(master_weights)
        if self.master_weights == "kahan":
            self.kernel = kahan_kernel(type(self).kernel)

    def _checked_params(self, params: Any) -> Any:
        """``params`` checked as this rule takes them (split: bfloat16 only)."""
        return check_split_params(params) if self.master_weights == "split" else check_params(params)

    def _array_dtype(self, xp: Any, param_dtype: Any, slot: str) -> Any:
        """The dtype of slot ``slot``'s arrays: :meth:`slot_dtype`, but ``master_low``'s own."""
        return low_bits_dtype(xp) if slot == SPLIT_SLOT else self.slot_dtype(xp, param_dtype)

    def slot_dtype(self, xp: Any, param_dtype: Any) -> Any:
        """The dtype of this rule's state arrays for params of ``param_dtype``: ``state_dtype``,
        else the compute dtype (float32 for float16/bfloat16 params). A step computes in the
        compute dtype whatever the state's: it reads the state exactly and rounds what it
        writes back to nearest even."""
        return slot_dtype_for(xp, param_dtype, self.state_dtype)

    def gradient_scalars(self, steps_taken: int) -> dict[str, Any]:
        """Host scalars of :func:`portopt.rules.common.effective_gradient`: maximize and coupled decay."""
        weight_decay = evaluate("weight_decay", getattr(self, "weight_decay", 0.0), steps_taken)
        return dict(maximize=self.maximize, coupled_decay=weight_decay != 0, weight_decay=weight_decay)

    def initial_host_state(self) -> dict[str, float]:
        """Whole-tree state kept on the host (see State.host); most rules have none."""
        return {}

    def host_state_names(self) -> tuple[str, ...]:
        """The names of :meth:`initial_host_state`, without evaluating anything (a schedule
        is evaluated only for the step it serves)."""
        return tuple(self.initial_host_state())

    def state_names(self) -> tuple[frozenset[str], frozenset[str]]:
        """The slot names and the host-state names as sets, made once (a rule is immutable)."""
        names = self.__dict__.get("_state_names")
        if names is None:
            names = self.__dict__["_state_names"] = (frozenset(self.slot_names()), frozenset(self.host_state_names()))
        return names

    def restore_host_state(self, step: int, host: dict[str, float]) -> dict[str, float]:
        """The host state for a checkpoint that lacks some of it (an older format); most rules have none."""
        return host

    def advance_host_state(self, steps_taken: int, host: dict[str, float], xp: Any, grads: Sequence,
                           params: Sequence) -> tuple[dict[str, float], dict[str, float]]:
        """Extra host scalars for this step and the new host state, from the gradients if needed.
        Runs after the step's checks, so it evaluates no schedule itself: a value it needs is
        the one :meth:`host_scalars` evaluated for the step (:meth:`remember`, :meth:`recalled`)."""
        return {}, host

    def remember(self, name: str, steps_taken: int, value: float) -> float:
        """Keep ``value``, the schedule ``name`` evaluated by :meth:`host_scalars` for this
        step, for :meth:`advance_host_state` (which runs after the checks, where user code may
        not run: a schedule could move an array the checks saw)."""
        self.__dict__.setdefault("_remembered", {})[name] = (steps_taken, value)
        return value

    def recalled(self, name: str, steps_taken: int) -> float:
        """The value :meth:`remember` kept for this step (every step evaluates host_scalars
        first), else the schedule evaluated now (a caller that did not)."""
        kept = self.__dict__.get("_remembered", {}).get(name)
        if kept is not None and kept[0] == steps_taken:
            return kept[1]
        return evaluate(name, getattr(self, name), steps_taken)

    # --- the shared API ---------------------------------------------------------------
    def init(self, params: Any) -> State:
        """A fresh state for ``params`` (one array or a dict/list/tuple tree of arrays)."""
        checked = self._checked_params(params)
        xp = checked.xp
        slots = {}
        for slot in self.slot_names():
            # an option's buffer starts at zero (split: the master weights start as the params)
            value = 0 if slot in MASTER_WEIGHT_SLOTS.values() else self.slot_initial_value(slot)
            slots[slot] = unflatten(checked.treedef, [
                xp.full(p.shape, value, dtype=self._array_dtype(xp, p.dtype, slot), device=checked.device)
                for p in checked.leaves])
        register_pytree()  # a no-op unless jax is imported
        return State(rule=self.name, step=0, slots=slots, host=self.initial_host_state())

    @traceable
    def update(self, params: Any, grads: Any, state: State) -> tuple[Any, State]:
        """One step, pure: returns ``(new_params, new_state)`` and mutates nothing.

        No returned array is one of the inputs (a skipped step returns copies).
        """
        plan = self.__dict__.get("_repeatable_update")
        evaluated = None
        if plan is not None:
            rule, transform = self.lane_parts()
            result, evaluated = repeat_update(rule, plan, params, grads, state, transform)
            if result is not None:
                return result
        prepared = self.prepared(params, grads, state, writing=False, evaluated=evaluated)
        result = prepared.compute()
        self.__dict__["_repeatable_update"] = (prepared.plan if isinstance(prepared, PreparedStep)
                                               and prepared.repeatable(self) else None)
        return result

    def update_evaluated(self, params: Any, grads: Any, state: State, evaluated: tuple | None = None
                         ) -> tuple[Any, State]:
        """:meth:`update`, with this step's host scalars if the caller evaluated them first
        (a partition evaluates every part's schedules before checking any part). JAX arrays,
        traced or not, take :meth:`update`'s own paths (nothing of theirs can move)."""
        if evaluated is None or jax_takes(params, state):
            return self.update(params, grads, state)
        return self.prepared(params, grads, state, writing=False, evaluated=evaluated).compute()

    def prepared(self, params: Any, grads: Any, state: State, *, writing: bool, evaluated: tuple | None = None,
                 transform: Callable[[Plan, list], list] | None = None) -> PreparedStep | SplitStep:
        """This rule's checked step (update and step share it; a chain prepares its rule's,
        with its transforms); with ``master_weights="split"``, its master's (a SplitStep)."""
        if self.master_weights == "split":
            return SplitStep(self, params, grads, state, writing=writing, transform=transform, evaluated=evaluated)
        return PreparedStep(self, params, grads, state, writing=writing, transform=transform, evaluated=evaluated)

    def evaluate_schedules(self, state: Any) -> tuple | None:
        """This step's host scalars, evaluated before any check (:func:`portopt.plan.evaluate_first`)."""
        if self.master_weights == "split":
            return master_rule(self).evaluate_schedules(inner_state(state))
        return evaluate_first(self, state)

    def step(self, params: Any, grads: Any, state: State) -> None:
        """One step in place: the results are written into ``params`` and ``state``.

        Everything is checked and every host scalar evaluated before the first write, so
        bad input leaves params and state as they were. Bit-identical to :meth:`update`.
        """
        plan = self.__dict__.get("_repeatable")
        evaluated = None
        if plan is not None:
            rule, transform = self.lane_parts()
            write, evaluated = prepare_repeat(rule, plan, params, grads, state, transform=transform)
            if write is not None:
                write()
                return
        prepared = self.plan_step(params, grads, state, evaluated=evaluated)
        prepared.apply()
        self.__dict__["_repeatable"] = prepared.plan if prepared.repeatable(self) else None

    def lane_parts(self) -> tuple[Rule, Callable[[Plan, list], list] | None]:
        """What a repeated step's lane runs: the rule whose kernel steps, and the gradient
        transform before it (None here; a chain's transforms)."""
        return self, None

    def plan_step(self, params: Any, grads: Any, state: State, *, evaluated: tuple | None = None
                  ) -> PreparedStep | SplitStep:
        """Check an in-place step and evaluate its scalars; ``.apply()`` then writes it.

        Lets a caller with several groups (the torch drop-in) check them all before
        writing any. ``evaluated``: this step's host scalars, if the caller evaluated them
        first (:func:`portopt.plan.evaluate_first`; then the schedules run once, before any check).
        """
        return self.prepared(params, grads, state, writing=True, evaluated=evaluated)

    def __getstate__(self) -> dict[str, Any]:
        # cached step plans hold arrays; they are rebuilt on the first step after unpickling
        return {k: v for k, v in self.__dict__.items()
                if k not in ("_plans", "_repeatable", "_repeatable_update", "_constructing", "_remembered",
                             "_master")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

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
            slots[name] = [_bfloat16_as_bits(adapter_for(array_api_compat.array_namespace(x)).to_numpy(x))
                           for x in leaves]
        return {
            "format": STATE_FORMAT, "rule": self.name, "hyperparameters": self.hyperparameters(),
            "step": state.step, "skipped": state.skipped, "host": dict(state.host),
            "tree": tree_to_json(treedef) if treedef is not None else None, "slots": slots,
        }

    def load_state_dict(self, state_dict: dict[str, Any], like: Any) -> State:
        """A State from :meth:`state_dict` data, on the backend, device and dtypes of ``like``.

        Checks the format, the rule, the slots, the tree and every array's shape and dtype
        against ``like`` (the params) before converting anything; anything that does not fit
        raises :class:`CheckpointError`. A checkpoint saved with other options that change the
        state (``amsgrad``, ``momentum``, ``centered``, ...) has other slots and is refused;
        one saved with other values of the rest (``lr``, ``betas``, ``eps``, ...) loads, as
        torch.optim lets them change, with a :class:`portopt.CheckpointWarning` naming each
        difference: from then on this rule's values apply.
        """
        checked = self._checked_params(like)
        if not isinstance(state_dict, dict):
            raise CheckpointError(f"state_dict must be a dict from state_dict() or portopt.load, got "
                                  f"{type(state_dict).__name__}")
        found = state_dict.get("format")
        if found != STATE_FORMAT:
            raise CheckpointError(f"state_dict has format {found!r}, expected {STATE_FORMAT!r}")
        for key, kind in (("rule", str), ("slots", dict), ("step", int)):
            if not isinstance(state_dict.get(key), kind):
                raise CheckpointError(f"state_dict[{key!r}] must be a {kind.__name__}, got "
                                      f"{type(state_dict.get(key)).__name__}")
        if state_dict["rule"] != self.name:
            raise CheckpointError(f"state_dict is a {state_dict['rule']} state, not {self.name}")
        names = self.slot_names()
        if set(state_dict["slots"]) != set(names):
            raise CheckpointError(f"state_dict has slots {sorted(state_dict['slots'])}, this {self.name} needs "
                                  f"{sorted(names)}; was it saved with other options (amsgrad, momentum, ...)?")
        tree = state_dict.get("tree")
        if tree is not None:
            try:
                saved_tree = tree_from_json(tree)
            except (KeyError, TypeError, ValueError, AttributeError) as error:
                raise CheckpointError(f"state_dict's tree is malformed ({type(error).__name__}: {error})"[:300]) \
                    from error
            if saved_tree != checked.treedef:
                raise CheckpointError(f"state_dict's tree {saved_tree.describe()} differs from "
                                      f"like's {checked.treedef.describe()}")
        step, skipped, host = state_dict["step"], state_dict.get("skipped", 0), state_dict.get("host", {})
        for key, value in (("step", step), ("skipped", skipped)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise CheckpointError(f"state_dict's {key} must be an int >= 0, got {value!r}")
        if not isinstance(host, dict):
            raise CheckpointError(f"state_dict's host state must be a dict, got {type(host).__name__}")
        host = self.restore_host_state(step, dict(host))
        if set(host) != set(self.host_state_names()) or not all(type(v) is float for v in host.values()):
            raise CheckpointError(f"state_dict's host state {host!r} does not fit {self.name}"[:300])
        for name in names:
            arrays = state_dict["slots"][name]
            if not isinstance(arrays, (list, tuple)) or len(arrays) != len(checked.leaves):
                raise CheckpointError(f"state_dict slot {name!r} must be a list of {len(checked.leaves)} arrays")
            for path, array, p in zip(checked.paths, arrays, checked.leaves):
                want = dtype_name(checked.xp, self._array_dtype(checked.xp, p.dtype, name))
                if not isinstance(array, np.ndarray):
                    raise CheckpointError(f"state_dict slot {name!r}{path} is a {type(array).__name__}, not a "
                                          "NumPy array")
                stored = "bfloat16" if want == "bfloat16" and array.dtype == np.uint16 else array.dtype.name
                if tuple(array.shape) != tuple(p.shape) or stored != want:
                    raise CheckpointError(f"state_dict slot {name!r}{path} is {array.dtype.name}{tuple(array.shape)}, "
                                          f"like{path} needs {want}{tuple(p.shape)}")
        _warn_about_other_hyperparameters(self, state_dict.get("hyperparameters"))
        adapter = adapter_for(checked.xp)
        def restored(array: np.ndarray) -> Any:
            if array.dtype == np.uint16:  # bfloat16 bits
                return adapter.bfloat16_from_bits(array, checked.device)
            return adapter.from_numpy(array, checked.device)

        slots = {name: unflatten(checked.treedef, [restored(_bfloat16_as_bits(a))
                                                   for a in state_dict["slots"][name]])
                 for name in names}
        register_pytree()
        return State(rule=self.name, step=step, slots=slots, skipped=skipped, host=host)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({args})"


class PreparedStep:
    """One checked step: the plan, the step's leaves, whether it is skipped, its scalars."""

    def __init__(self, rule: Rule, params: Any, grads: Any, state: State, *, writing: bool,
                 transform: Callable[[Plan, list], list] | None = None, evaluated: tuple | None = None) -> None:
        """``transform(plan, grads)``: new gradient leaves from the checked ones (clipping).
        The host scalars are evaluated first (schedules are user code, which could undo a
        check made before them), unless ``evaluated`` gives them."""
        self.rule, self.state, self.transformed = rule, state, transform is not None
        if evaluated is None:
            evaluated = evaluate_first(rule, state)
        self.plan: Plan
        self.plan, (self.p_leaves, self.g_leaves, self.slot_leaves) = plan_for(rule, params, grads, state, writing)
        if writing:
            self.g_leaves = self.plan.unshared_grads(self.p_leaves, self.g_leaves, self.slot_leaves)
        if transform is not None:
            self.g_leaves = transformed_grads(self.plan, self.g_leaves, transform(self.plan, self.g_leaves))
            if writing:  # a transform may hand back what the step writes
                self.g_leaves = self.plan.unshared_grads(self.p_leaves, self.g_leaves, self.slot_leaves)
        self.skip = rule.skip_nonfinite and not _all_finite(self.plan.xp, self.g_leaves)
        if self.skip:
            return
        self.scalars, self.new_host = step_scalars(rule, state, self.plan.xp, self.g_leaves, self.p_leaves, evaluated)

    def repeatable(self, caller: Rule) -> bool:
        """Whether ``caller``'s next step can take its lane: for an in-place step on the same
        arrays :func:`portopt.plan.prepare_repeat`, for update :func:`portopt.plan.repeat_update`.
        It can when this one was ``caller``'s own (a chain's: its rule's, with its transforms),
        not skipping non-finite gradients, and one compiled loop (in place: over NumPy arrays or
        torch tensors)."""
        plan = self.plan
        rule, transform = caller.lane_parts()
        return (self.rule is rule and self.transformed == (transform is not None) and not self.skip
                and not caller.skip_nonfinite and (plan.repeats or not plan.writing) and len(plan.groups) == 1
                and plan.groups[0].executor == "compiled")

    def _cache(self) -> ScalarCache:
        cache = self.plan.__dict__.get("scalar_cache")
        if cache is None:
            cache = self.plan.__dict__["scalar_cache"] = ScalarCache()
        return cache

    def apply(self) -> None:
        """Write the step into the params and the state, then count it.

        Everything that can fail or allocate is done first (checks, scalars, the reference
        path's new values, the compiled path's address tables); then the writes run. A step
        of several parts defers a KeyboardInterrupt until they are all written. If anything
        still stops the writes half way (out of memory in the blocked path, a signal handler
        that raises), the state is marked ``torn`` and later steps refuse it.
        """
        state = self.state
        if self.skip:
            state.skipped += 1
            return
        plan, kernel, cache = self.plan, self.rule.kernel, self._cache()
        remembered: dict = {}
        writes = []
        for group in plan.groups:
            write = run_group(plan, group, kernel, self.scalars, cache, self.p_leaves, self.g_leaves,
                              self.slot_leaves, None, remembered)
            assert write is not None  # in place, every group hands back its writes
            writes.append(write)
        # One loop is all or nothing, but Ctrl-C can surface just after it returns, before the step
        # is counted: held here too (the repeat lane, which skips this, marks the state torn then).
        atomic = len(plan.groups) == 1 and plan.groups[0].executor == "compiled"
        with interrupts_deferred():
            done = 0
            try:
                for write in writes:
                    write()
                    done += 1
                plan.known = remembered
                state.host = self.new_host
                state.step += 1
            except BaseException:
                if done or not atomic:
                    state.torn = True
                raise

    def compute(self) -> tuple[Any, State]:
        """The step's new params and state, as new arrays (update)."""
        plan, state = self.plan, self.state
        names = plan.slot_names  # the rule's, in the kernel's order (a rule is immutable)
        if self.skip:
            xp = plan.xp
            params = unflatten(plan.treedef, [_copy(xp, x) for x in self.p_leaves])
            slots = {name: unflatten(plan.treedef, [_copy(xp, x) for x in leaves])
                     for name, leaves in zip(names, self.slot_leaves)}
            return params, State(rule=self.rule.name, step=state.step, slots=slots, skipped=state.skipped + 1,
                                 host=dict(state.host))
        outputs: list = []
        remembered: dict = {}
        for group in plan.groups:
            run_group(plan, group, self.rule.kernel, self.scalars, self._cache(), self.p_leaves,
                      self.g_leaves, self.slot_leaves, outputs, remembered)
        plan.known = remembered
        count = len(self.p_leaves)
        new_params: list = [None] * count
        new_slots: list[list] = [[None] * count for _ in names]
        for index, p, slots in outputs:
            new_params[index] = p
            for k, x in enumerate(slots):
                new_slots[k][index] = x
        return fresh_result(self.rule, plan, state, new_params, new_slots, self.new_host)


class CheckpointWarning(UserWarning):
    """A checkpoint loaded with hyperparameters other than those it was saved with."""


def _warn_about_other_hyperparameters(rule: Rule, saved: Any) -> None:
    if not isinstance(saved, dict):
        return
    from .checkpoint import json_hyperparameters

    mine = json_hyperparameters(rule.hyperparameters())
    theirs = json_hyperparameters(saved)
    different = [f"{name}={theirs[name]!r} (this rule: {mine[name]!r})" for name in sorted(mine)
                 if name in theirs and not _same_value(theirs[name], mine[name])]
    if different:
        warnings.warn(f"the checkpoint was saved with {', '.join(different)}; loading it as torch.optim does, "
                      f"with this {type(rule).__name__}'s values from here on", CheckpointWarning, stacklevel=3)


def _same_value(a: Any, b: Any) -> bool:
    """Whether two hyperparameter values from JSON are equal (anything odd counts as different)."""
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def _all_finite(xp: Any, grads: list) -> bool:
    """Whether every gradient element is finite (an exact boolean reduction)."""
    return all(bool(xp.all(xp.isfinite(g))) for g in grads)


def _copy(xp: Any, x: Any) -> Any:
    return xp.asarray(x, copy=True)


def _bfloat16_as_bits(array: np.ndarray) -> np.ndarray:
    """bfloat16 state goes into state dicts and checkpoints as its uint16 bit patterns (the
    form every backend's host copy can give; NumPy has no bfloat16 of its own)."""
    return array.view(np.uint16) if array.dtype.name == "bfloat16" else array

