"""Split master weights: ``master_weights="split"`` on any rule, for bfloat16 params.

A float32's high 16 bits are a bfloat16. The params hold them; the slot ``master_low`` holds the
low 16 bits (as int16: the same bit patterns); together they are exactly a float32 master weight
(as bf16-fused-adam keeps its weights). A step joins the two halves, runs the rule on the float32
master exactly as on float32 params (the bfloat16 gradients widened, exactly), and splits the
result again::

    master  = bits_to_float32(bits(p) << 16 | master_low)
    master' = the rule's step of master, with float32 gradients
    p, master_low = high and low 16 bits of master'     (a NaN master: the quiet NaN 7fc00000)

So ``join(p, master_low)`` is bit for bit the float32-params run, and ``p`` is that run's params
truncated toward zero to bfloat16 (always within one bfloat16 ulp of it). Only bit moves and the
rule's own correctly rounded operations: the same bits on every backend. The step reads and
writes through temporaries (the float32 master and gradients), so it moves more bytes than the
fused rules do; it computes a step's new values before writing any.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .backends import adapter_for
from .checks import check_grads, check_params, check_state
from .numerics import dtype_name
from .plan import _check_no_shared_memory, _check_writeable, interrupts_deferred
from .state import State
from .trees import flatten, unflatten

if TYPE_CHECKING:
    from .optimizer import PreparedStep, Rule

__all__ = ["SPLIT_SLOT", "SplitStep", "join_halves", "split_halves", "master_rule", "low_bits_dtype", "update_on_jax"]

SPLIT_SLOT = "master_low"
_QUIET_NAN_BITS = 0x7FC00000  # a NaN master is stored as this: its halves are then a NaN and 0


def low_bits_dtype(xp: Any) -> Any:
    """The dtype of ``master_low`` arrays in namespace ``xp``: int16, holding the low halves' bit
    patterns (not uint16: torch 2.13 cannot unpickle a uint16 tensor, so a state_dict would not copy)."""
    return xp.int16


def _bitcast(x: Any, dtype: Any) -> Any:
    """``x``'s bits as ``dtype`` (of the same width): ``view`` on NumPy, CuPy and torch."""
    jax = sys.modules.get("jax")
    if jax is not None and isinstance(x, jax.Array):
        return jax.lax.bitcast_convert_type(x, dtype)
    return x.view(dtype)


def join_halves(xp: Any, high: Any, low: Any) -> Any:
    """The float32 whose high 16 bits are the bfloat16 ``high`` and whose low 16 bits are the
    int16 ``low``'s bit pattern."""
    wide = xp.astype(_bitcast(high, xp.int16), xp.int32)  # sign-extended: its low 16 bits are high's
    bits = xp.asarray((wide << 16) | (xp.astype(low, xp.int32) & 0xFFFF))  # NumPy makes 0-d results scalars
    return _bitcast(bits, xp.float32)


def split_halves(xp: Any, master: Any, bfloat16: Any) -> tuple[Any, Any]:
    """``(high, low)`` of the float32 ``master``: its high 16 bits as a ``bfloat16`` array (the
    value truncated toward zero) and its low 16 bits as int16 (the same pattern). A NaN becomes the quiet NaN
    ``7fc00000`` first, so neither half depends on a NaN's payload."""
    bits = _bitcast(xp.asarray(master), xp.int32)
    bits = xp.asarray(xp.where(master != master, xp.asarray(_QUIET_NAN_BITS, dtype=xp.int32), bits))
    high = _bitcast(xp.asarray(xp.astype(bits >> 16, xp.int16)), bfloat16)  # arithmetic shift: fits int16
    low = xp.asarray(xp.astype((bits << 16) >> 16, xp.int16))  # the low half, sign-extended: fits int16
    return high, low


def master_rule(rule: Rule) -> Rule:
    """The rule that steps the float32 master: ``rule`` with ``master_weights=None`` (its state
    has ``rule``'s slots but ``master_low``, in the same dtype), made once per rule."""
    twin = rule.__dict__.get("_master")
    if twin is None:
        twin = rule.__dict__["_master"] = type(rule)(**{**rule.hyperparameters(), "master_weights": None})
    return twin


def inner_state(state: Any) -> Any:
    """``state`` without its ``master_low`` slot, for the master's rule (anything else as it is,
    for that rule's checks to refuse). The slot arrays are the same objects."""
    if not isinstance(state, State) or not isinstance(state.slots, dict):
        return state
    return State(rule=state.rule, step=state.step, slots={k: v for k, v in state.slots.items() if k != SPLIT_SLOT},
                 skipped=state.skipped, host=state.host, torn=state.torn)


def check_split_params(params: Any) -> Any:
    """``params`` checked as any step's, then each a bfloat16 array (the only 16-bit format that is
    a float32's high half)."""
    checked = check_params(params)
    for path, p in zip(checked.paths, checked.leaves):
        name = dtype_name(checked.xp, p.dtype)
        if name != "bfloat16":
            raise TypeError(f"params{path} is {name}; master_weights='split' needs bfloat16 params (the high half "
                            "of a float32 master weight; float16 is no float32's half: its exponent range is "
                            "narrower). Use master_weights='kahan' for float16")
    return checked


def update_on_jax(rule: Rule, params: Any, grads: Any, state: State) -> tuple[Any, State]:
    """A split rule's ``update`` on JAX arrays, traced (``jax.jit``) or not: the master's update
    (portopt.jax's paths, the reference's bits) between the join and the split. Checks what a
    trace can see: the trees, the backend, the params' and gradients' dtypes and shapes, the
    ``master_low`` slot's (the master's update checks the rest). Outside a trace the schedules
    are evaluated first, before any check, as on every other backend."""
    import jax
    import jax.numpy as jnp

    from .jax import eager_update
    from .state import is_traced
    from .trees import leaf_paths

    twin, inner = master_rule(rule), inner_state(state)
    traced = is_traced(getattr(state, "step", None))
    evaluated = None if traced else twin.evaluate_schedules(inner)  # user code, before the checks
    p_leaves, treedef = flatten(params)
    for path, p in zip(leaf_paths(treedef), p_leaves):
        if p.dtype != jnp.bfloat16:
            raise TypeError(f"params{path} is {p.dtype}; master_weights='split' needs bfloat16 params (the high "
                            "half of a float32 master weight)")
    g_leaves, g_treedef = flatten(grads)
    if g_treedef != treedef:
        raise ValueError(f"grads has tree structure {g_treedef.describe()} but params has {treedef.describe()}")
    for path, p, g in zip(leaf_paths(treedef), p_leaves, g_leaves):
        if not isinstance(g, jax.Array):
            raise TypeError(f"grads{path} is a {type(g).__module__}.{type(g).__name__}, params{path} a JAX array; "
                            "grads must be JAX arrays too")
        if g.dtype != jnp.bfloat16 or tuple(g.shape) != tuple(p.shape):
            raise TypeError(f"grads{path} is {g.dtype}{tuple(g.shape)}, params{path} is bfloat16{tuple(p.shape)}; "
                            "grads must have the params' dtype and shape")
    slots = getattr(state, "slots", None)
    if not isinstance(state, State) or not isinstance(slots, dict) or SPLIT_SLOT not in slots:
        raise ValueError(f"state must be a State of {rule.name} with its {SPLIT_SLOT!r} slot (from init)")
    lows, low_treedef = flatten(slots[SPLIT_SLOT])
    if low_treedef != treedef:
        raise ValueError(f"state.slots[{SPLIT_SLOT!r}] has tree structure {low_treedef.describe()} but params has "
                         f"{treedef.describe()}")
    for path, p, low in zip(leaf_paths(treedef), p_leaves, lows):
        if not isinstance(low, jax.Array) or low.dtype != jnp.int16 or tuple(low.shape) != tuple(p.shape):
            raise TypeError(f"state.slots[{SPLIT_SLOT!r}]{path} is {type(low).__name__} "
                            f"{getattr(low, 'dtype', '')}{tuple(getattr(low, 'shape', ()))}, params{path} needs a JAX "
                            f"int16{tuple(p.shape)}")
    masters = unflatten(treedef, [join_halves(jnp, p, low) for p, low in zip(p_leaves, lows)])
    wide_grads = unflatten(treedef, [jnp.astype(g, jnp.float32) for g in g_leaves])
    if traced:
        new_masters, new_inner = twin.update(masters, wide_grads, inner)
    else:
        new_masters, new_inner = eager_update(twin, masters, wide_grads, inner, evaluated)
    halves = [split_halves(jnp, m, jnp.bfloat16) for m in flatten(new_masters)[0]]
    return unflatten(treedef, [high for high, _ in halves]), _with_low_halves(
        rule, new_inner, unflatten(treedef, [low for _, low in halves]))


def _with_low_halves(rule: Rule, master_state: State, lows: Any) -> State:
    """The split rule's state: the master's new state with the ``master_low`` slot ``lows``."""
    slots = {**master_state.slots, SPLIT_SLOT: lows}
    return State(rule=rule.name, step=master_state.step, slots={name: slots[name] for name in rule.slot_names()},
                 skipped=master_state.skipped, host=master_state.host)


class SplitStep:
    """One checked step of a split rule: the master's step (a :class:`PreparedStep` of
    :func:`master_rule`) over the joined halves, then :meth:`apply` or :meth:`compute` split it.
    Offers what callers read of a PreparedStep: ``rule``, ``state``, ``skip``, ``plan``."""

    def __init__(self, rule: Rule, params: Any, grads: Any, state: State, *, writing: bool,
                 transform: Callable[[Any, list], list] | None = None, evaluated: tuple | None = None) -> None:
        from .optimizer import PreparedStep

        twin = master_rule(rule)
        inner = inner_state(state)
        if evaluated is None:
            evaluated = twin.evaluate_schedules(inner)  # user code, before any check it could undo
        checked = check_split_params(params)
        xp = checked.xp
        g_leaves = check_grads(grads, checked)
        slots = check_state(state, rule.name, rule.slot_names(), checked, rule.host_state_names(), rule.slot_dtype,
                            fixed_dtypes={SPLIT_SLOT: low_bits_dtype(xp)})
        adapter = adapter_for(xp)
        if writing:
            _check_writeable(adapter, checked, slots)
            _check_no_shared_memory(adapter, checked, slots)
        self.rule, self.state, self.adapter, self.xp = rule, state, adapter, xp
        self.p_leaves, self.slots, self.treedef = checked.leaves, slots, checked.treedef
        masters = [join_halves(xp, p, low) for p, low in zip(checked.leaves, slots[SPLIT_SLOT])]
        wide_grads = [xp.astype(g, xp.float32) for g in g_leaves]  # exact; a copy, so no gradient is a param
        self.master_step: PreparedStep = PreparedStep(
            twin, unflatten(checked.treedef, masters), unflatten(checked.treedef, wide_grads), inner,
            writing=False, transform=transform, evaluated=evaluated)
        self.skip, self.plan = self.master_step.skip, self.master_step.plan

    def repeatable(self, caller: Rule) -> bool:
        return False  # the repeated step's lane is one compiled loop over the caller's own arrays

    def _new_values(self) -> tuple[list, list, State]:
        """New params and ``master_low`` leaves, and the master's new state."""
        masters, new_inner = self.master_step.compute()
        bfloat16 = self.p_leaves[0].dtype if self.p_leaves else None
        halves = [split_halves(self.xp, m, bfloat16) for m in flatten(masters)[0]]
        return [high for high, _ in halves], [low for _, low in halves], new_inner

    def compute(self) -> tuple[Any, State]:
        """The step's new params and state, as new arrays (update)."""
        highs, lows, new_inner = self._new_values()
        return unflatten(self.treedef, highs), _with_low_halves(self.rule, new_inner, unflatten(self.treedef, lows))

    def apply(self) -> None:
        """Write the step into the params and the state: every new value is computed first, then
        written (a KeyboardInterrupt waits for the writes; anything that still stops them marks
        the state torn)."""
        state = self.state
        if self.skip:
            state.skipped += 1
            return
        highs, lows, new_inner = self._new_values()
        pairs = [*zip(self.p_leaves, highs), *zip(self.slots[SPLIT_SLOT], lows)]
        for name in master_rule(self.rule).slot_names():
            pairs += zip(self.slots[name], flatten(new_inner.slots[name])[0])
        with interrupts_deferred(True):
            try:
                for destination, source in pairs:
                    self.adapter.write(destination, source)
                state.host, state.step = new_inner.host, new_inner.step
            except BaseException:
                state.torn = True
                raise
