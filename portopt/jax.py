"""``jax.jit(rule.update)`` and eager ``rule.update`` on JAX arrays, with the reference's bits.

Importing this module, or making a State from JAX arrays, registers :class:`portopt.State`
as a JAX pytree (its slot arrays, ``step``, ``skipped`` and host values are leaves; the rule's
name, the host keys and ``torn`` are static), so ``jax.jit(rule.update)(params, grads, state)``
works for every rule of ``portopt.RULES``, ``MultiSteps``, ``Clipped`` and ``chain`` (with
``ClipByGlobalNorm`` / ``ClipByValue``). ``Rule.update`` sends a traced call here. It traces
once (the step count is an argument, not a constant) and gives the bits of portopt's eager
step on NumPy (the reference). ``Rule.update`` on concrete JAX arrays, outside a trace, runs
:func:`eager_update`, which gives the same bits (see "Eager JAX" below).

A traced step
-------------
1. The inputs are checked as eager ``update`` checks them (``portopt.checks``).
2. Gradient transforms (the global-norm clip) and whole-tree reductions run in the trace.
3. One :func:`jax.pure_callback` computes on the host, in Python floats as eager portopt does,
   the step's host scalars (bias corrections, schedules, NAdam's ``Πμ``, AdaGrad-Norm's
   ``b + eps``) from the traced step count and host state. It returns the index of the
   kernel's flag combination, the numbers as arrays of each compute dtype, the new host
   state, and two ``-0.0`` per dtype (below).
4. ``lax.switch`` on that index evaluates the kernel's traced graph
   (:mod:`portopt.kernels.trace`) for that combination with guarded ``jnp`` operations. Every
   flag combination the kernel can take is a branch (flags such as RAdam's ``rectified`` or
   SGD's ``first_step`` change with the step); one more branch returns the inputs, for a step
   skipped for non-finite gradients.

Why the guards keep the reference's bits
----------------------------------------
Under ``jit`` XLA compiles the whole step and changes its arithmetic. Measured on jax 0.10.2,
CPU, random float32 inputs (tests/test_jax.py shows each one):

- LLVM contracts ``a*b + c`` into one FMA, rounded once (23% of results differ);
- XLA's algebraic simplifier rewrites ``A / sqrt(B)`` to ``A * rsqrt(B)``, ``(A/B)/C`` to
  ``A/(B*C)``, ``A/(B/C)`` to ``(A*C)/B``, ``sqrt(A*A)`` to ``|A|`` and, on the CPU, ``A /
  broadcast(b)`` to ``A * broadcast(1/b)`` for a runtime scalar b (25-39% differ).

Each of these needs a pattern in an operand: a multiply feeding an add (or a sqrt), a sqrt
or a divide feeding a divide, a broadcast as a divisor. The graph is evaluated so that none
occurs:

- Every product, quotient and square root is followed by ``+ z``, where ``z`` is ``-0.0``
  from the callback, a value XLA cannot see. ``x + (-0.0) == x`` exactly for every ``x``
  (``+0`` stays ``+0``, ``-0`` stays ``-0``, NaN and infinities stay), so no value changes,
  but every consumer now reads an add. LLVM may still contract ``a*b + z`` into ``fma(a, b,
  z)``: that is ``round(a*b + (-0)) = round(a*b)``, the plain product; its result is an add,
  which nothing contracts with again (neither XLA nor LLVM without fast-math reassociates
  floating-point adds). No divide sees a sqrt or a divide, no sqrt a multiply. A constant
  ``-0.0`` would not do: ``x + (-0.0)`` folds to ``x`` in XLA and in LLVM.
- A division of an array by a 0-d value (a host scalar) divides by ``b + w``, ``w = where(x !=
  x, z1, z2)``: a full-shape ``-0.0`` that depends on the numerator ``x`` and on two runtime
  zeros (with equal or constant branches the ``where`` would fold), so the divisor is no
  broadcast and the reciprocal rewrite cannot apply.

Half-precision params are computed in float32 and rounded back once, as eagerly; XLA keeps
those conversions (``f32 -> bfloat16 -> f32`` included; measured on the CPU). What this does
not change: XLA on the CPU flushes subnormal inputs and results to zero, eagerly and under
jit alike (the conformance suite's known exception for JAX).

Eager JAX
---------
jnp's own operations are jitted functions, so eager JAX meets the rewrites inside one
operation: an array divided by a 0-d array is multiplied by the reciprocal (about 10% of
float32 results are off by an ulp). Run op by op, portopt's kernels would leave the
reference's bits wherever they divide an array by a host scalar (Adam's ``sqrt(v) / sqrt(1 -
b2^t)``, NAdam, AdaGrad-Norm, MultiSteps). So ``Rule.update`` on concrete JAX arrays runs
:func:`eager_update`: the eager step's own checks and host side (the same errors, naming the
argument, before anything is computed; gradient transforms, the non-finite skip, host state
and scalars in Python floats), then the kernel's graph for the step's flags evaluated with the
guarded operations under ``jax.jit``. The numbers and the ``-0.0`` are arguments of that
compiled function, runtime values XLA cannot fold, so no host callback is needed. It compiles
once per graph (a flag combination) and per shapes, dtypes and placement of the leaves.
Gradient transforms run eagerly, as on NumPy: jnp's single operations round as NumPy's
(only a division by a broadcast 0-d array is rewritten, and clipping multiplies by its factor).

Trees and costs
---------------
JAX hands a traced function its dicts with the keys sorted, so the whole-tree sums (the
global-norm clip, AdaGrad-Norm's ``‖g‖²``) run over the leaves in sorted-key order: the bits
of the reference on the same dict built in sorted order (lists and tuples keep their order).
Outside a trace a State holds Python numbers: the pytree's unflatten turns concrete counters
and host bits back into ``int`` and ``float`` (a host sync per jitted step), so jitted and
eager steps can alternate on one state. The host callback costs JAX's slower dispatch of a
computation with a host callback (about 1 ms per step on a 2-core CPU), which dominates small
problems; large ones are bound by memory as optax's step is.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import array_api_compat
import array_api_compat.numpy as host_xp
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .checks import Leaves, check_grads, check_params, check_state
from .clipping import Chain, ClipByGlobalNorm, ClipByValue, norm_dtype
from .kernels.trace import COMPARISONS, Graph, Node, trace
from .numerics import compute_dtype, dtype_name, flags_of, ieee_maximum, ieee_minimum, scalar_fields
from .optimizer import Rule
from .reductions import pairwise_sum
from .state import State, bits_float, float_bits, register_pytree
from .trees import unflatten

__all__ = ["update", "eager_update", "Branches", "branches", "Guard", "evaluate", "negative_zeros"]

register_pytree()

_INT32_MAX = 2**31 - 1


# --- the kernel's graphs, one per flag combination -----------------------------------------
@dataclass(frozen=True)
class Branches:
    """A kernel's traced graphs: one per distinct graph its flags can give, and for every
    flag combination (in the order of the scalars' flag fields) the index of its graph."""

    graphs: tuple[Graph, ...]
    index: dict[tuple[bool, ...], int]
    numbers: tuple[str, ...]  # the scalars' number fields, in the order the callback sends them


@functools.cache
def branches(kernel: Callable[..., tuple], scalars_type: Any, slot_count: int) -> Branches:
    """Trace ``kernel`` for every combination of its flags (2**flags traces, on the host);
    combinations that cannot run with ``slot_count`` slots (a slot the flag needs is absent)
    are left out, and combinations that give the same graph share it."""
    flag_positions, number_positions = scalar_fields(scalars_type)
    fields = scalars_type._fields
    graphs: list[Graph] = []
    by_signature: dict[tuple, int] = {}
    index: dict[tuple[bool, ...], int] = {}
    for flags in itertools.product((False, True), repeat=len(flag_positions)):
        graph = _traced(kernel, scalars_type, flag_positions, flags, slot_count)
        if graph is None:
            continue
        signature = _signature(graph)
        if signature not in by_signature:
            by_signature[signature] = len(graphs)
            graphs.append(graph)
        index[flags] = by_signature[signature]
    return Branches(tuple(graphs), index, tuple(fields[k] for k in number_positions))


def _traced(kernel: Callable[..., tuple], scalars_type: type, flag_positions: tuple[int, ...],
            flags: tuple[bool, ...], slot_count: int) -> Graph | None:
    """The graph of one flag combination, or None if the kernel cannot run it with these slots."""
    values: list[Any] = [0.0] * len(scalars_type._fields)  # type: ignore[attr-defined]
    for position, flag in zip(flag_positions, flags):
        values[position] = flag
    try:
        graph = trace(kernel, scalars_type(*values), slot_count)
    except (TypeError, AttributeError, IndexError, ValueError):  # a slot this combination needs is absent
        return None
    return graph if len(graph.outputs) == 1 + slot_count else None


def _signature(graph: Graph) -> tuple:
    """The graph's structure: equal for equal computations."""
    nodes = tuple((node.op, node.name if node.op in ("input", "scalar") else None,
                   tuple(argument.index for argument in node.args)) for node in graph.nodes)
    return nodes, tuple(output.index for output in graph.outputs)


# --- evaluating a graph with operations XLA cannot fuse or rewrite -------------------------
class Guard:
    """The jnp operations of a traced kernel, guarded as the module docstring explains:
    ``z`` and ``w`` are runtime ``-0.0`` of one dtype (outputs of a callback)."""

    def __init__(self, z: Any, w: Any) -> None:
        self.z, self.w = z, w

    def mul(self, x: Any, y: Any) -> Any:
        """``x * y + (-0.0)``: the product, rounded once, whatever XLA fuses."""
        return x * y + self.z

    def div(self, x: Any, y: Any) -> Any:
        """``x / y + (-0.0)``; a 0-d divisor of an array is made a full-shape array first."""
        if jnp.ndim(y) == 0 and jnp.ndim(x) > 0:
            y = y + jnp.where(x != x, self.z, self.w)
        return x / y + self.z

    def sqrt(self, x: Any) -> Any:
        """``sqrt(x) + (-0.0)``: correctly rounded, never turned into rsqrt."""
        return jnp.sqrt(x) + self.z


def _compare(op: str) -> Callable[[Any, Any], Any]:
    symbol = COMPARISONS[op]
    return {"<": jnp.less, "<=": jnp.less_equal, ">": jnp.greater, ">=": jnp.greater_equal,
            "==": jnp.equal, "!=": jnp.not_equal}[symbol]


_PLAIN: dict[str, Callable[..., Any]] = {
    "add": jnp.add, "sub": jnp.subtract, "neg": jnp.negative, "abs": jnp.abs, "signbit": jnp.signbit,
    "where": jnp.where, "and": jnp.logical_and, "or": jnp.logical_or,
    "maximum": lambda x, y: ieee_maximum(jnp, x, y), "minimum": lambda x, y: ieee_minimum(jnp, x, y),
    **{op: _compare(op) for op in COMPARISONS},
}


def evaluate(graph: Graph, arrays: Sequence[Any], numbers: dict[str, Any], guard: Guard,
             storage: Any = None) -> list:
    """The graph's outputs for ``arrays`` (p, g, slots) and 0-d ``numbers`` by scalar name;
    ``storage``: the params' dtype, for ``round_like_params`` (None: the compute dtype)."""
    inputs = {id(node): array for node, array in zip(graph.arrays, arrays)}
    values: list[Any] = [None] * len(graph.nodes)
    for node in graph.nodes:
        values[node.index] = _value(node, values, inputs, numbers, guard, storage)
    return [values[output.index] for output in graph.outputs]


def _value(node: Node, values: list, inputs: dict[int, Any], numbers: dict[str, Any], guard: Guard,
           storage: Any) -> Any:
    if node.op == "input":
        return inputs[id(node)]
    if node.op == "scalar":
        return numbers[str(node.name)]
    arguments = [values[argument.index] for argument in node.args]
    if node.op in ("mul", "div", "sqrt"):
        return getattr(guard, node.op)(*arguments)
    if node.op == "round_param":
        return _round_like(arguments[0], storage)
    if node.op not in _PLAIN:
        raise TypeError(f"portopt.jax has no evaluation for the traced operation {node.op!r}")
    return _PLAIN[node.op](*arguments)


def _round_like(x: Any, storage: Any) -> Any:
    """``x`` rounded to the params' dtype (to nearest even) and widened back: exact both ways."""
    if storage is None or storage == x.dtype:
        return x
    return x.astype(storage).astype(x.dtype)


# --- runtime -0.0 ---------------------------------------------------------------------------
def negative_zeros(dtypes: Sequence[str]) -> dict[str, tuple[Any, Any]]:
    """Two ``-0.0`` of each dtype from a host callback: values XLA cannot fold."""
    shapes = tuple(jax.ShapeDtypeStruct((2,), np.dtype(name)) for name in dtypes)
    made = jax.pure_callback(functools.partial(_zeros_on_host, tuple(dtypes)), shapes, vmap_method="sequential")
    return {name: (pair[0], pair[1]) for name, pair in zip(dtypes, made)}


def _zeros_on_host(dtypes: tuple[str, ...]) -> tuple[np.ndarray, ...]:
    return tuple(np.array([-0.0, -0.0], dtype=name) for name in dtypes)


# --- the host side of a step ------------------------------------------------------------------
class _Unavailable(list):
    """What ``advance_host_state`` gets for the gradients and params under a trace: reading it
    says why (only AdaGrad-Norm's sum of squares is computed for the host)."""

    def __init__(self, rule: Rule, name: str) -> None:
        super().__init__()
        self.rule, self.name = rule, name

    def _refuse(self) -> TypeError:
        return TypeError(f"under jax.jit, {type(self.rule).__name__}.advance_host_state cannot read the {self.name}: "
                         "they are traced arrays, not host values")

    def __len__(self) -> int:
        raise self._refuse()

    def __getitem__(self, index: Any) -> Any:
        raise self._refuse()

    def __iter__(self) -> Iterator[Any]:
        raise self._refuse()


class _HostStep:
    """The callback of a traced step: host scalars and the new host state, in Python floats."""

    def __init__(self, rule: Rule, found: Branches, keys: tuple[str, ...], dtypes: tuple[str, ...],
                 reduces: bool, has_leaves: bool, skip_index: int) -> None:
        self.rule, self.found, self.keys, self.dtypes = rule, found, keys, dtypes
        self.reduces, self.has_leaves, self.skip_index = reduces, has_leaves, skip_index
        self.positions = scalar_fields(type(rule.host_scalars(0)))[1]  # the numbers, as found.numbers

    def shapes(self) -> tuple:
        """The shapes and dtypes the callback returns."""
        numbers = len(self.found.numbers) + 2  # and two -0.0
        return (jax.ShapeDtypeStruct((), np.int32), *(jax.ShapeDtypeStruct((2,), np.uint32) for _ in self.keys),
                *(jax.ShapeDtypeStruct((numbers,), np.dtype(name)) for name in self.dtypes))

    def __call__(self, step: np.ndarray, skip: np.ndarray, *rest: np.ndarray) -> tuple:
        bits, reduction = rest[:len(self.keys)], (rest[len(self.keys)] if self.reduces else None)
        steps_taken = int(step)
        if steps_taken < 0:
            raise ValueError(f"state.step must be an int >= 0, got {steps_taken}")
        if bool(skip):
            return self._result(self.skip_index, tuple(np.asarray(b, np.uint32) for b in bits),
                                [0.0] * len(self.found.numbers))
        host = {key: bits_float(b) for key, b in zip(self.keys, bits)}
        scalars = self.rule.host_scalars(steps_taken)  # before the advance, which recalls its schedules
        extra, new_host = self._advance(steps_taken, host, reduction)
        scalars = scalars._replace(**extra) if extra else scalars
        flags = flags_of(scalars)
        index = self.found.index.get(flags)
        if index is None:
            raise RuntimeError(f"portopt internal error: {self.rule.name}'s kernel has no traced branch for its "
                               f"flags {flags}")
        numbers = [float(scalars[position]) for position in self.positions]
        return self._result(index, tuple(float_bits(new_host[key]) for key in self.keys), numbers)

    def _advance(self, steps_taken: int, host: dict[str, float],
                 reduction: np.ndarray | None) -> tuple[dict[str, Any], dict[str, float]]:
        if reduction is not None:
            return self.rule.advance_from_sum_of_squares(host, np.asarray(reduction))  # type: ignore[attr-defined]
        grads: list = _Unavailable(self.rule, "gradients") if self.has_leaves else []
        params: list = _Unavailable(self.rule, "params") if self.has_leaves else []
        return self.rule.advance_host_state(steps_taken, host, host_xp, grads, params)

    def _result(self, index: int, bits: tuple, numbers: list[float]) -> tuple:
        values = [*numbers, -0.0, -0.0]
        return (np.asarray(index, np.int32), *bits, *(np.asarray(values, dtype=name) for name in self.dtypes))


# --- checking the traced inputs ---------------------------------------------------------------
def _parts(rule: Rule) -> tuple[tuple, Rule]:
    """(gradient transforms, the rule with a kernel) of ``rule``."""
    if isinstance(rule, Chain):
        for transform in rule.transforms:
            if not isinstance(transform, (ClipByGlobalNorm, ClipByValue)):
                name = getattr(transform, "__qualname__", type(transform).__name__)
                raise TypeError(f"portopt.jax cannot trace the gradient transform {name}: only "
                                "ClipByGlobalNorm and ClipByValue are written with operations it guards")
        return rule.transforms, rule.rule
    if getattr(rule, "kernel", None) is None:
        raise TypeError(f"portopt.jax cannot trace {type(rule).__name__}.update: it steps rules with a kernel "
                        "(portopt.RULES, MultiSteps) and chains of them")
    return (), rule


def _counter(name: str, value: Any) -> Any:
    """``state.step`` / ``state.skipped`` as an int32 0-d array (a Python int or a traced integer)."""
    if type(value) is int:
        if not 0 <= value <= _INT32_MAX:
            raise ValueError(f"{name} must be an int in [0, 2**31), got {value!r}")
        return jnp.asarray(value, dtype=jnp.int32)
    if isinstance(value, (jax.Array, np.ndarray)) and value.shape == () and jnp.issubdtype(value.dtype, jnp.integer):
        return jnp.asarray(value).astype(jnp.int32)
    raise ValueError(f"{name} must be an int >= 0 (inside a trace: a 0-d integer array), got {value!r}"[:300])


def _host_bits(key: str, value: Any) -> Any:
    """A host value as its float64 bits (two uint32): a Python float, or the traced bits."""
    if type(value) is float:
        return jnp.asarray(float_bits(value))
    if isinstance(value, (jax.Array, np.ndarray)) and value.shape == (2,) and value.dtype == np.uint32:
        return value
    raise ValueError(f"state.host[{key!r}] must be a float (inside a trace: its bits, two uint32), got {value!r}"[:300])


def _checked(rule: Rule, params: Any, grads: Any, state: Any) -> tuple[Leaves, list, list[list]]:
    """The leaves of params, grads and every slot, checked as eager ``update`` checks them."""
    checked = check_params(params)
    if checked.leaves and not array_api_compat.is_jax_namespace(checked.xp):
        raise TypeError(f"params must be JAX arrays to be stepped under a JAX trace, got {checked.xp.__name__} arrays")
    grad_leaves = check_grads(grads, checked)
    if not isinstance(state, State):
        raise TypeError(f"state must be a portopt State (from init), got {type(state).__name__}")
    plain = replace(state, step=0, skipped=0)  # the counters are checked by _counter
    slots = check_state(plain, rule.name, rule.slot_names(), checked, rule.host_state_names(),
                        rule.slot_dtype)
    return checked, grad_leaves, [slots[name] for name in rule.slot_names()]


# --- gradient transforms and reductions in the trace --------------------------------------
def _sum_of_squares(leaves: Sequence[Any], dtype: Any, guard: Guard) -> Any:
    """:func:`portopt.reductions.pairwise_sum_of_squares`, its squares guarded."""
    squares = []
    for leaf in leaves:
        wide = leaf.astype(dtype)
        squares.append(guard.mul(wide, wide))
    return pairwise_sum(jnp, squares, dtype)


def _clip_by_global_norm(leaves: list, transform: ClipByGlobalNorm, zeros: dict[str, tuple[Any, Any]]) -> list:
    """:func:`portopt.clipping.clipped_leaves` in the trace: ``g * min(1, max_norm / (norm + eps))``."""
    if not leaves:
        return leaves
    dtype = norm_dtype(jnp, leaves)
    guard = Guard(*zeros[dtype_name(jnp, dtype)])
    norm = guard.sqrt(_sum_of_squares(leaves, dtype, guard))
    factor = guard.div(jnp.asarray(transform.max_norm, dtype=dtype), norm + jnp.asarray(transform.eps, dtype=dtype))
    factor = jnp.where(factor < jnp.asarray(1.0, dtype=dtype), factor, jnp.asarray(1.0, dtype=dtype))
    clipped = []
    for g in leaves:
        compute = compute_dtype(jnp, g.dtype)
        scaled = Guard(*zeros[dtype_name(jnp, compute)]).mul(g.astype(compute), factor.astype(compute))
        clipped.append(scaled if scaled.dtype == g.dtype else scaled.astype(g.dtype))
    return clipped


@dataclass(frozen=True)
class _TracePlan:
    """What a gradient transform reads of a plan (ClipByValue: the namespace and device)."""

    xp: Any
    device: Any = None


def _transformed(transforms: tuple, leaves: list, zeros: dict[str, tuple[Any, Any]]) -> list:
    for transform in transforms:
        if isinstance(transform, ClipByGlobalNorm):
            leaves = _clip_by_global_norm(leaves, transform, zeros)
        else:  # ClipByValue: comparisons and where only, nothing XLA rewrites
            leaves = transform(_TracePlan(jnp), leaves)
    return leaves


def _all_finite(leaves: list) -> Any:
    finite = jnp.asarray(True)
    for g in leaves:
        finite = finite & jnp.all(jnp.isfinite(g))
    return finite


# --- one traced step ----------------------------------------------------------------------------
def update(rule: Rule, params: Any, grads: Any, state: State) -> tuple[Any, State]:
    """One step of ``rule`` on arrays JAX is tracing; what ``rule.update`` runs under
    ``jax.jit`` (the module docstring says how). Returns ``(new_params, new_state)``; the new
    state's ``step``, ``skipped`` and host values are traced arrays."""
    transforms, inner = _parts(rule)
    checked, g_leaves, slot_leaves = _checked(inner, params, grads, state)
    step, skipped = _counter("state.step", state.step), _counter("state.skipped", state.skipped)
    keys = inner.host_state_names()
    host = [_host_bits(key, state.host[key]) for key in keys]
    p_leaves = checked.leaves
    dtypes = tuple(sorted({dtype_name(jnp, compute_dtype(jnp, p.dtype)) for p in p_leaves}))
    reduces = bool(p_leaves) and type(inner).host_state_uses_gradients
    if reduces and not hasattr(inner, "advance_from_sum_of_squares"):
        raise TypeError(f"portopt.jax cannot trace {type(inner).__name__}: its host state reads the gradients, and "
                        "only a sum of squares (advance_from_sum_of_squares) can be handed to the host")
    g_leaves, skip, extra_inputs = _gradients(transforms, inner, g_leaves, dtypes, reduces)
    scalars_type: Any = type(inner.host_scalars(0))
    found = branches(inner.kernel, scalars_type, len(slot_leaves))
    host_step = _HostStep(inner, found, keys, dtypes, reduces, bool(p_leaves), len(found.graphs))
    index, *rest = jax.pure_callback(host_step, host_step.shapes(), step, skip, *host, *extra_inputs,
                                     vmap_method="sequential")
    new_host, numbers = rest[:len(keys)], dict(zip(dtypes, rest[len(keys):]))
    new_p, new_slots = _switch(found, inner.skip_nonfinite, index, p_leaves, g_leaves, slot_leaves, numbers)
    stepped = jnp.logical_not(skip).astype(jnp.int32)
    new_state = State(rule=inner.name, step=step + stepped, skipped=skipped + skip.astype(jnp.int32),
                      slots={name: _build(checked, leaves) for name, leaves in zip(inner.slot_names(), new_slots)},
                      host=dict(zip(keys, new_host)))
    return _build(checked, new_p), new_state


def _gradients(transforms: tuple, rule: Rule, leaves: list, dtypes: tuple[str, ...],
               reduces: bool) -> tuple[list, Any, list]:
    """The step's gradients (transformed), whether it is skipped (a non-finite gradient, for a
    rule with ``skip_nonfinite``), and what the host callback reads of them (AdaGrad-Norm's
    sum of squares). Products here need their ``-0.0`` before the step's callback: a first one."""
    needs_zeros = bool(leaves) and (reduces or any(isinstance(t, ClipByGlobalNorm) for t in transforms))
    zeros = negative_zeros(dtypes) if needs_zeros else {}
    leaves = _transformed(transforms, list(leaves), zeros)
    skip = ~_all_finite(leaves) if rule.skip_nonfinite else jnp.asarray(False)
    if not reduces:
        return leaves, skip, []
    dtype = norm_dtype(jnp, leaves)
    return leaves, skip, [_sum_of_squares(leaves, dtype, Guard(*zeros[dtype_name(jnp, dtype)]))]


def _build(checked: Leaves, leaves: Sequence[Any]) -> Any:
    """A tree of ``checked``'s structure from ``leaves``."""
    return unflatten(checked.treedef, list(leaves))


def _switch(found: Branches, skips: bool, index: Any, p_leaves: list, g_leaves: list, slot_leaves: list[list],
            numbers: dict[str, Any]) -> tuple[list, list[list]]:
    """The new params and slots from the branch ``index`` selects (the last returns the inputs
    unchanged when the rule skips non-finite steps)."""
    names = found.numbers
    slot_count = len(slot_leaves)

    def run(graph: Graph, operands: tuple) -> tuple:
        ps, gs, slots, by_dtype = operands
        outputs = [_step_leaf(graph, p, g, [leaves[k] for leaves in slots], names, by_dtype)
                   for k, (p, g) in enumerate(zip(ps, gs))]
        return [o[0] for o in outputs], [[o[1][j] for o in outputs] for j in range(slot_count)]

    def unchanged(operands: tuple) -> tuple:
        ps, _gs, slots, _numbers = operands
        return list(ps), [list(leaves) for leaves in slots]

    functions: list[Callable[[tuple], tuple]] = [functools.partial(run, graph) for graph in found.graphs]
    if skips:
        functions.append(unchanged)
    operands = (list(p_leaves), list(g_leaves), [list(leaves) for leaves in slot_leaves], numbers)
    if len(functions) == 1:
        new_p, new_slots = functions[0](operands)
    else:
        new_p, new_slots = lax.switch(index, functions, operands)
    return list(new_p), [list(leaves) for leaves in new_slots]


def _step_leaf(graph: Graph, p: Any, g: Any, slots: list, names: tuple[str, ...],
               by_dtype: dict[str, Any]) -> tuple[Any, list]:
    """One leaf, as the eager reference path steps it: computed in the compute dtype (float32
    for 16-bit params), slots read exactly and rounded back to their own dtype."""
    dtype = compute_dtype(jnp, p.dtype)
    values = by_dtype[dtype_name(jnp, dtype)]
    numbers = {name: values[k] for k, name in enumerate(names)}
    guard = Guard(values[len(names)], values[len(names) + 1])
    arrays = [p, g] if p.dtype == dtype else [p.astype(dtype), g.astype(dtype)]
    arrays += [x if x.dtype == dtype else x.astype(dtype) for x in slots]
    new_p, *new_slots = evaluate(graph, arrays, numbers, guard, p.dtype)
    new_p = new_p if new_p.dtype == p.dtype else new_p.astype(p.dtype)
    return new_p, [x if x.dtype == old.dtype else x.astype(old.dtype) for x, old in zip(new_slots, slots)]


# --- eager JAX: the reference's host side, the guarded kernel compiled ------------------------
def eager_update(rule: Rule, params: Any, grads: Any, state: State, evaluated: tuple | None = None
                 ) -> tuple[Any, State]:
    """One step of ``rule`` on concrete JAX arrays, outside any trace: what ``rule.update``
    runs for them (the module docstring's "Eager JAX" says why and how).

    Everything but the kernel is the eager step itself (:class:`portopt.optimizer.PreparedStep`):
    the checks, with their errors naming the argument, the gradient transforms, the
    non-finite skip, the host state and the host scalars, in Python floats. The kernel's graph
    for this step's flags is then evaluated with the guarded operations under ``jax.jit``
    (compiled once per graph and per shapes and dtypes of the leaves), with the numbers and the
    ``-0.0`` as arguments: runtime values, and no host callback. ``evaluated``: this step's host
    scalars, if the caller evaluated them first (a split rule: before its own checks)."""
    prepared = _prepared(rule, params, grads, state, evaluated)
    if prepared.skip:
        return prepared.compute()  # copies of the inputs: no arithmetic
    inner = prepared.rule
    compiled = _compiled_kernel(inner.kernel, prepared.scalars, len(prepared.slot_leaves))
    if compiled is None:  # a kernel the tracer cannot record: the reference path, op by op
        return prepared.compute()
    p_leaves, g_leaves, slot_leaves = prepared.p_leaves, prepared.g_leaves, prepared.slot_leaves
    numbers = _numbers(prepared.scalars, p_leaves)
    new_p, new_slots = compiled(list(p_leaves), list(g_leaves), [list(leaves) for leaves in slot_leaves], numbers)
    inputs = {id(x) for x in (*p_leaves, *g_leaves, *(x for leaves in slot_leaves for x in leaves))}
    new_p = [_fresh(x, inputs) for x in new_p]
    new_slots = [[_fresh(x, inputs) for x in leaves] for leaves in new_slots]
    build = prepared.plan.build
    return build(new_p), State(rule=inner.name, step=state.step + 1,
                               slots={name: build(leaves) for name, leaves in zip(inner.slot_names(), new_slots)},
                               skipped=state.skipped, host=prepared.new_host)


def _prepared(rule: Rule, params: Any, grads: Any, state: State, evaluated: tuple | None = None) -> Any:
    """The eager step's checks and host side, as ``rule.update`` prepares them."""
    return rule.prepared(params, grads, state, writing=False, evaluated=evaluated)


def _numbers(scalars: Any, p_leaves: Sequence[Any]) -> dict[str, Any]:
    """The step's numbers and two ``-0.0``, rounded once to each compute dtype of the params
    (as the reference's 0-d scalars are), as host arrays: arguments of the compiled kernel."""
    values = [float(scalars[position]) for position in scalar_fields(type(scalars))[1]] + [-0.0, -0.0]
    dtypes = {dtype_name(jnp, compute_dtype(jnp, p.dtype)) for p in p_leaves}
    return {name: np.asarray(values, dtype=name) for name in sorted(dtypes)}


def _fresh(x: Any, inputs: set[int]) -> Any:
    """``x``, copied if it is one of the step's inputs (jit hands an input that passes through
    straight back; ``update`` returns no input array)."""
    return jnp.array(x, copy=True) if id(x) in inputs else x


_COMPILED: dict[tuple, Callable[..., Any] | None] = {}


def _compiled_kernel(kernel: Callable[..., tuple], scalars: Any, slot_count: int) -> Callable[..., Any] | None:
    """``jax.jit`` of the guarded evaluation of ``kernel``'s graph for the flags of
    ``scalars``, made once per (kernel, flags, slot count); None if the kernel cannot be traced."""
    flags = flags_of(scalars)
    key = (kernel, type(scalars), flags, slot_count)
    found = _COMPILED.get(key, False)
    if found is not False:
        return found  # type: ignore[return-value]
    scalars_type = type(scalars)
    flag_positions, number_positions = scalar_fields(scalars_type)
    graph = _traced(kernel, scalars_type, flag_positions, flags, slot_count)
    if graph is None:
        _COMPILED[key] = None
        return None
    names = tuple(scalars_type._fields[k] for k in number_positions)

    def run(ps: list, gs: list, slots: list[list], by_dtype: dict[str, Any]) -> tuple[list, list[list]]:
        outputs = [_step_leaf(graph, p, g, [leaves[k] for leaves in slots], names, by_dtype)
                   for k, (p, g) in enumerate(zip(ps, gs))]
        return [o[0] for o in outputs], [[o[1][j] for o in outputs] for j in range(slot_count)]

    compiled = _COMPILED[key] = jax.jit(run)
    return compiled
