"""The optimizer state: which rule made it, steps taken, and per-parameter slot arrays."""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["State", "register_pytree", "register_composite", "is_traced", "float_bits", "bits_float", "counter_leaf",
           "python_int"]


@dataclass
class State:
    """State of one rule for one tree of parameters.

    ``slots`` maps a slot name (torch.optim's state key, e.g. ``'exp_avg'``) to a tree of
    arrays shaped like the parameters. ``step`` counts the steps taken; ``skipped`` the
    steps skipped for non-finite gradients (``skip_nonfinite=True``). ``host`` holds the
    few rules' state that is one number for the whole tree (AdaGrad-Norm's ``b²``), as
    Python floats (AdaGrad-Norm's ``b²``, NAdam's ``Πμ``). ``update`` returns a new State;
    ``step`` updates this one in place. ``torn`` is set if an in-place step was stopped while
    writing (params and state may hold part of it); a torn state is refused from then on.

    With jax imported, a State is a JAX pytree (see :mod:`portopt.jax`): inside a trace
    ``step``, ``skipped`` and the ``host`` values are arrays; outside they are Python numbers.
    """

    rule: str
    step: int
    slots: dict[str, Any] = field(default_factory=dict)
    skipped: int = 0
    host: dict[str, float] = field(default_factory=dict)
    torn: bool = False


# --- JAX: State as a pytree (registered only once jax is imported; portopt never imports it) ---
_REGISTERED = False
_INT32_MAX = 2**31 - 1


def is_traced(value: Any) -> bool:
    """Whether ``value`` is a JAX tracer (an argument of a function jax.jit is tracing)."""
    if type(value) is int:  # the eager step: no lookup
        return False
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(value, jax.core.Tracer)


def register_pytree() -> None:
    """Make State a JAX pytree, once, if jax is imported (a no-op otherwise).

    Leaves: the slot arrays, ``step`` and ``skipped`` (int32) and each host value (its
    float64 bits as two uint32, so it passes through a trace exactly whether or not
    ``jax_enable_x64`` is set). Static: the rule's name, the host keys and ``torn``.
    """
    global _REGISTERED
    if _REGISTERED or sys.modules.get("jax") is None:
        return
    import jax

    jax.tree_util.register_pytree_node(State, _flatten, _unflatten)
    for cls, flatten, unflatten in _COMPOSITES:
        jax.tree_util.register_pytree_node(cls, flatten, unflatten)
    _REGISTERED = True


# The composite states (PartitionState): registered with State, whenever that happens.
_COMPOSITES: list[tuple[type, Callable[[Any], tuple], Callable[[Any, Any], Any]]] = []


def register_composite(cls: type, flatten: Callable[[Any], tuple], unflatten: Callable[[Any, Any], Any]) -> None:
    """A composite state class made a JAX pytree as :class:`State` is (now, if it already is)."""
    _COMPOSITES.append((cls, flatten, unflatten))
    if _REGISTERED:
        import jax

        jax.tree_util.register_pytree_node(cls, flatten, unflatten)


def float_bits(value: float) -> np.ndarray:
    """A Python float's float64 bits as two uint32 (low word first)."""
    return np.frombuffer(struct.pack("<d", value), dtype="<u4").astype(np.uint32)


def bits_float(bits: Any) -> float:
    """The Python float whose float64 bits :func:`float_bits` gave."""
    words = np.asarray(bits, dtype=np.uint32).reshape(2)
    return float(struct.unpack("<d", words.astype("<u4").tobytes())[0])


def _flatten(state: State) -> tuple[tuple, tuple]:
    keys = tuple(state.host)
    host = tuple(float_bits(v) if type(v) is float else v for v in state.host.values())
    return (state.slots, counter_leaf(state.step), counter_leaf(state.skipped), host), (state.rule, keys, state.torn)


def _unflatten(static: tuple, children: tuple) -> State:
    rule, keys, torn = static
    slots, step, skipped, host = children
    values = {key: _host_number(value) for key, value in zip(keys, host)}
    return State(rule=rule, step=python_int(step), slots=slots, skipped=python_int(skipped), host=values, torn=torn)


def counter_leaf(value: Any) -> Any:
    """A step counter as a pytree leaf: a Python int as an int32 0-d array (every step then traces
    alike); anything else as it is."""
    if type(value) is int and 0 <= value <= _INT32_MAX:
        return np.asarray(value, dtype=np.int32)
    return value


def _concrete(value: Any) -> bool:
    """Whether ``value`` is a NumPy array or a JAX array with a value (not a tracer)."""
    if isinstance(value, (np.ndarray, np.generic)):
        return True
    jax = sys.modules.get("jax")
    return (jax is not None and isinstance(value, jax.Array) and not isinstance(value, jax.core.Tracer)
            and value.is_fully_addressable)


def python_int(value: Any) -> Any:
    """A concrete 0-d integer array as a Python int (the State outside a trace); else as it is."""
    if _concrete(value) and value.shape == () and np.issubdtype(value.dtype, np.integer):
        return int(value)
    return value


def _host_number(value: Any) -> Any:
    """Concrete float64 bits (two uint32) as the Python float; else as it is."""
    if _concrete(value) and value.shape == (2,) and value.dtype == np.uint32:
        return bits_float(np.asarray(value))
    return value


register_pytree()  # jax imported before portopt: State is a pytree from the start
