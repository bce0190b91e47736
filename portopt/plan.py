"""Step plans: check a (params, grads, state) signature once, then step it cheaply.

The first step of a tree runs every check of :mod:`portopt.checks` and records what it
established as a :class:`Plan`: the tree structure, each array's signature (type, shape,
dtype, device, writeability, contiguity; see ``Adapter.signature``), and how each leaf is
executed. Later steps re-read only those signatures (:meth:`Plan.bind`); if any differs,
or the tree does, the full checks run again, so a changed input gets the same clear error
a first step gets, before anything is written.

Executors, per group of leaves of one compute dtype:

- ``compiled``: one compiled call for all the group's leaves (their addresses in a table;
  a strided view is *staged*: a C-order copy is read, and written back, around the call);
- ``blocked``: the kernel on cache-sized blocks, on threads (in-place steps only);
- ``reference``: the kernel on whole arrays in the backend's namespace.

All give the reference bits (tests/test_fast_paths.py, and the conformance suite under
each fast-path mode).
"""

from __future__ import annotations

import bisect
import contextlib
import importlib
import itertools
import math
import operator
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from portopt.backends import Adapter, adapter_for

from . import fast
from .checks import Leaves, check_grads, check_params, check_state
from .fast.blocked import numpy_namespace, run_blocked
from .kernels import cpu as compiled
from .kernels import device as device_loops
from .kernels import host_shim
from .numerics import RuleNamespace, compute_dtype, dtype_name, flags_of, materialise, scalar_fields, with_param_storage
from .state import State, is_traced
from .trees import builder, collector

if TYPE_CHECKING:
    from .optimizer import Rule

__all__ = ["Plan", "plan_for", "TracedInputs", "prepare_repeat", "step_scalars", "evaluate_first", "transformed_grads"]


class TracedInputs(TypeError):
    """Params that JAX is tracing reached the eager path (``update`` then runs portopt.jax's
    traced step instead; ``step``, which writes in place, cannot run on them)."""


_COMPILED_DTYPE_NAMES = ("float32", "float64")  # the compiled loops compute in these
_TABLED = ("compiled", "cuda")  # executors of one call over a table of addresses


class Group:
    """Leaves of one compute dtype stepped by one executor."""

    def __init__(self, executor: str, dtype: Any, host_dtype: np.dtype | None, indexes: list[int],
                 sizes: list[int], slot_count: int, storage: tuple[str, ...] | None = None,
                 staged: frozenset[tuple[int, int]] = frozenset()) -> None:
        self.executor, self.dtype, self.host_dtype, self.indexes = executor, dtype, host_dtype, indexes
        self.storage = storage  # compiled: the dtype name each array is stored in (p, g, slots)
        # compiled: (row, column) of the table entries stepped through a C-order copy (rows p,
        # g, then each slot; columns the group's leaves); the signature holds contiguity, so a
        # step that matches the plan has the same ones
        self.staged = staged
        self.table = compiled.Table(sizes, slot_count) if executor in _TABLED else None
        self.loops_by_flags: dict[tuple, Any] = {}  # flags can change between steps
        # NumPy, in place: the arrays of the last step and their address tables, reused while
        # every array is the same object again (a NumPy array's memory cannot move while held)
        self.last_tables: tuple[tuple, np.ndarray, np.ndarray] | None = None

    def loops(self, kernel: Any, scalars: tuple, slot_count: int, target: str = "device") -> Any:
        """The loops of this group's executor for the flags of ``scalars`` (CPU loops, or the
        generated CUDA source's table kernel on ``target``)."""
        flags = flags_of(scalars)
        loops = self.loops_by_flags.get(flags)
        if loops is None and self.executor == "cuda":
            assert self.storage is not None
            loops = self.loops_by_flags[flags] = device_loops.device_loops_for(kernel, scalars, slot_count,
                                                                               self.storage[0], target)
        if loops is None:
            assert self.host_dtype is not None  # a compiled group has one
            loops = self.loops_by_flags[flags] = compiled.loops_for(kernel, scalars, slot_count, self.host_dtype,
                                                                     self.storage)
        return loops

    @property
    def compiled_table(self) -> compiled.Table:
        assert self.table is not None, "only a compiled group has a table"
        return self.table


class Plan:
    """Everything the full checks established about one signature of (params, grads, state)."""

    def __init__(self, rule: Rule, params: Any, grads: Any, state: State, writing: bool) -> None:
        self.rule_name = rule.name
        self.slot_names = rule.slot_names()
        self.host_names = set(rule.host_state_names())
        self.writing = writing
        self.mode = fast.get_mode()
        checked: Leaves = check_params(params)
        if checked.leaves and is_traced(checked.leaves[0]):
            raise TracedInputs("params are traced by JAX (inside jax.jit or another transform): a step that writes in "
                               "place cannot run on them; use update(), which returns new arrays")
        grad_leaves = check_grads(grads, checked)
        slots = check_state(state, rule.name, self.slot_names, checked, tuple(self.host_names), rule.slot_dtype)
        self.treedef, self.paths, self.xp, self.device = checked.treedef, checked.paths, checked.xp, checked.device
        self.collect, self.build = collector(self.treedef), builder(self.treedef)
        self.adapter: Adapter = adapter_for(self.xp)  # the plain adapter for an empty tree (no namespace)
        if writing:
            _check_writeable(self.adapter, checked, slots)
            _check_no_shared_memory(self.adapter, checked, slots)
        self.namespace: RuleNamespace = self.adapter.rule_namespace(self.device)
        arrays = [*checked.leaves, *grad_leaves, *(x for name in self.slot_names for x in slots[name])]
        self.signatures = [self.adapter.signature(x) for x in arrays]
        # in place: the arrays the shared-memory checks passed, and where their elements lie; a
        # later step re-runs every check unless each written array is in the same place again
        # (the same bytes, or the same object where the backend cannot tell)
        written = [*checked.leaves, *(x for name in self.slot_names for x in slots[name])] if writing else []
        self.written = [_placed(self.adapter, x) for x in written]
        self.groups = self._groups(checked.leaves, grad_leaves, slots)
        # NumPy: addresses of the arrays the last step wrote, by array (a NumPy array's
        # memory cannot move while this plan holds it: NumPy refuses to resize a referenced
        # array). Looking an address up costs more than a whole small step.
        self.remembers = self.adapter.name == "numpy"
        # The next in-place step may reuse this one's address tables (prepare_repeat) where the
        # backend can tell where an array's elements lie (memory_layout): bind then finds a
        # written array that moved. A torch tensor can move and stay the same object (set_()),
        # so there the gradients are addressed again at every step.
        self.repeats = writing and (self.remembers or self.adapter.name == "torch")
        self.known: dict[int, tuple[Any, int]] = {}
        # the leaves a compiled group steps (their gradients are read by address)
        self.compiled_leaves = frozenset(index for group in self.groups if group.executor in _TABLED
                                         for index in group.indexes)

    # --- executors ---------------------------------------------------------------------
    def _groups(self, params: list, grads: list, slots: dict[str, list]) -> list[Group]:
        by_key: dict[tuple[str, Any, tuple[str, ...] | None], list[int]] = {}
        for index, p in enumerate(params):
            arrays = [p, grads[index], *(slots[name][index] for name in self.slot_names)]
            executor = self._executor(p, arrays)
            storage = tuple(dtype_name(self.xp, x.dtype) for x in arrays) if executor in _TABLED else None
            by_key.setdefault((executor, compute_dtype(self.xp, p.dtype), storage), []).append(index)
        groups = []
        for (executor, dtype, storage), indexes in by_key.items():
            sizes = [_size(params[i]) for i in indexes]
            host_dtype = np.dtype(dtype_name(self.xp, dtype)) if executor != "reference" else None
            staged: frozenset[tuple[int, int]] = frozenset()
            if executor == "compiled":
                rows = [params, grads, *(slots[name] for name in self.slot_names)]
                staged = frozenset((row, column) for row, leaves in enumerate(rows)
                                   for column, index in enumerate(indexes) if self.adapter.address(leaves[index]) is None)
            groups.append(Group(executor, dtype, host_dtype, indexes, sizes, len(self.slot_names), storage, staged))
        return groups

    def _executor(self, p: Any, arrays: list) -> str:
        adapter, mode = self.adapter, self.mode
        if mode == "off":
            return "reference"
        if self._generated_source_runs_here(mode, p, arrays):
            return "cuda"
        compute = dtype_name(self.xp, compute_dtype(self.xp, p.dtype))
        # half-precision arrays are converted in the loop, and only to and from float32
        # (from float64 they would be rounded twice)
        storable = compiled.STORAGE if compute == "float32" else _COMPILED_DTYPE_NAMES
        compiled_here = (mode in ("auto", "compiled") and compiled.available() and compute in _COMPILED_DTYPE_NAMES
                         and all(dtype_name(self.xp, x.dtype) in storable for x in arrays)
                         and all(adapter.address(x) is not None or adapter.stageable(x) for x in arrays))
        if compiled_here:
            return "compiled"
        if mode in ("auto", "blocked") and self.writing and all(
                dtype_name(self.xp, x.dtype) == compute for x in arrays[2:]) and all(
                adapter.flat_host_view(x, writeable=x is not arrays[1]) is not None for x in arrays):
            return "blocked"
        return "reference"

    def _generated_source_runs_here(self, mode: str, p: Any, arrays: list) -> bool:
        """Whether the generated CUDA table kernel steps this leaf: on CuPy arrays always where
        it can (CuPy's own ufuncs flush subnormals), on NumPy arrays in the mode "shim" (the
        source compiled for the host), where every array is contiguous and stored as the kernel
        reads it; torch CUDA tensors too where CuPy is installed to launch it."""
        adapter = self.adapter
        on_gpu = adapter.name == "cupy" or (adapter.name == "torch" and getattr(self.device, "type", "") == "cuda"
                                           and device_loops.launcher_available())
        if not ((on_gpu and mode != "off") or (adapter.name == "numpy" and mode == "shim")):
            return False
        if not on_gpu and host_shim.compiler() is None:
            raise RuntimeError('the fast path "shim" runs the generated CUDA source compiled for the host and needs a '
                               "C++ compiler (set CXX, or install g++); use another fast path")
        names = [dtype_name(self.xp, x.dtype) for x in arrays]
        return (device_loops.stores_as_the_kernel_reads(names[0], names)
                and all(adapter.device_address(x) is not None for x in arrays))

    # --- the cheap re-check of every later step -----------------------------------------
    def bind(self, params: Any, grads: Any, state: Any) -> tuple[Sequence, Sequence, Sequence[Sequence]] | None:
        """The leaves of this step if everything still matches the plan, else None."""
        if not self.takes_state(state):
            return None
        collect = self.collect
        p_leaves = collect(params)
        g_leaves = collect(grads)
        if p_leaves is None or g_leaves is None:
            return None
        slot_leaves = []
        for name in self.slot_names:
            tree = state.slots.get(name)
            leaves = None if tree is None else collect(tree)
            if leaves is None:
                return None
            slot_leaves.append(leaves)
        return self.bind_leaves(p_leaves, g_leaves, slot_leaves)

    def takes_state(self, state: Any) -> bool:
        """Whether ``state`` is one of this plan's (its rule, slot and host names, a step count,
        not torn) and the fast-path mode is still the plan's."""
        return not (type(state) is not State or state.rule != self.rule_name or not isinstance(state.slots, dict)
                    or not isinstance(state.host, dict) or len(state.slots) != len(self.slot_names)
                    or type(state.step) is not int or state.step < 0 or fast.get_mode() != self.mode or state.torn
                    or ((state.host or self.host_names) and set(state.host) != self.host_names))

    def bind_leaves(self, p_leaves: Sequence, g_leaves: Sequence, slot_leaves: Sequence[Sequence]
                    ) -> tuple[Sequence, Sequence, Sequence[Sequence]] | None:
        """The leaves, already collected from a state this plan takes, if every signature and
        every written array's place still match the plan, else None."""
        signature = self.adapter.signature
        expected = iter(self.signatures)
        for leaves in (p_leaves, g_leaves, *slot_leaves):
            for x in leaves:
                wanted = next(expected)
                if type(x) is not wanted[0] or signature(x) != wanted:  # the type first: another
                    return None                                          # backend's array
        if self.written and not self._written_in_place(p_leaves, slot_leaves):
            return None
        return p_leaves, g_leaves, slot_leaves

    def _written_in_place(self, p_leaves: Sequence, slot_leaves: Sequence[Sequence]) -> bool:
        """Whether every array this in-place step writes occupies the bytes the plan's checks
        saw (so no new sharing between them, and no moved memory behind a cached address)."""
        layout = self.adapter.memory_layout
        planned = iter(self.written)
        for leaves in (p_leaves, *slot_leaves):
            for x in leaves:
                array, watch, pointer, where = next(planned)
                if x is array and watch is not None:  # the common case, cheapest
                    if watch.value != pointer:
                        return False
                elif (x is not array) if where is None else (layout(x) != where):
                    return False
        return True

    def unshared_grads(self, p_leaves: Sequence, g_leaves: Sequence, slot_leaves: Sequence[Sequence],
                       written: tuple | None = None) -> Sequence:
        """``g_leaves`` with a copy in place of any gradient that shares memory with a param or
        slot this in-place step writes (so the step reads the gradient ``update`` would);
        ``written``: those params and slots in one tuple, if the caller has it."""
        adapter = self.adapter
        if written is None:
            written = (*p_leaves, *(x for leaves in slot_leaves for x in leaves))
        cached = self.__dict__.get("_written")
        if cached is None or len(cached[0]) != len(written) or not all(map(operator.is_, written, cached[0])):
            cached = self.__dict__["_written"] = (written, {id(x) for x in written}, _Spans(adapter, written))
        _, identities, spans = cached
        copied = None
        for index, g in enumerate(g_leaves):
            if (id(g) in identities and any(g is x for x in written)) or spans.shares(g):
                copied = list(g_leaves) if copied is None else copied
                copied[index] = self.xp.asarray(g, copy=True)
        return g_leaves if copied is None else copied

    def address(self, x: Any, remembered: dict[int, tuple[Any, int]] | None) -> int:
        """The address of ``x`` (planned to have one); kept in ``remembered`` for the next step."""
        known = self.known.get(id(x)) if self.remembers else None
        address = known[1] if known is not None and known[0] is x else self.adapter.planned_address(x)
        if address is None:  # the signature promised one
            raise RuntimeError("portopt internal error: a planned array has no address")
        if self.remembers and remembered is not None:
            remembered[id(x)] = (x, address)
        return address


def _placed(adapter: Adapter, x: Any) -> tuple[Any, Any, Any, Any]:
    """``(x, its layout watch, the watch's value, where its elements lie)`` as a plan
    remembers a written array (another object is compared by where its elements lie)."""
    watch = adapter.layout_watch(x)
    return x, watch, None if watch is None else watch.value, adapter.memory_layout(x)


class _Spans:
    """The memory ranges of the arrays a step writes, sorted, to find quickly whether another
    array shares memory with one of them (then checked exactly by the adapter)."""

    def __init__(self, adapter: Adapter, arrays: Sequence[Any]) -> None:
        self.adapter = adapter
        found = sorted((bounds, k) for k, x in enumerate(arrays)
                       if (bounds := adapter.memory_bounds(x)) is not None and bounds[1] > bounds[0])
        self.arrays = arrays
        self.starts = [low for (low, _), _ in found]
        self.spans = found
        self.reach = list(itertools.accumulate((high for (_, high), _ in found), max))

    def shares(self, x: Any) -> bool:
        if not self.spans:
            return False
        bounds = self.adapter.memory_bounds(x)
        if bounds is None or bounds[1] <= bounds[0]:
            return False
        low, high = bounds
        k = bisect.bisect_left(self.starts, high) - 1  # the last range that starts before x ends
        while k >= 0 and self.reach[k] > low:
            (_, span_high), position = self.spans[k]
            if span_high > low and self.adapter.share_memory(x, self.arrays[position]):
                return True
            k -= 1
        return False


def _size(x: Any) -> int:
    size = 1
    for n in x.shape:
        size *= int(n)
    return size


def _check_writeable(adapter: Adapter, params: Leaves, slots: dict[str, list], argument: str = "params",
                     remedy: str = "use update(), which returns new arrays") -> None:
    for path, p in zip(params.paths, params.leaves):
        if not adapter.is_writeable(p):
            raise TypeError(f"{argument}{path} is read-only ({adapter.label(params.device)}); {remedy}")
    for name, leaves in slots.items():
        for path, x in zip(params.paths, leaves):
            if not adapter.is_writeable(x):
                raise TypeError(f"state.slots[{name!r}]{path} is read-only; use update()")


def _check_no_shared_memory(adapter: Adapter, params: Leaves, slots: dict[str, list],
                            argument: str = "params", more: Sequence[tuple[str, Any]] = ()) -> None:
    """An in-place step writes each param and slot element once: none may share memory with
    itself (a zero stride) or with another written array (the same array twice in a tree).
    ``argument``: what the written leaves are called in the messages; ``more``: other written
    arrays, by name (a partition's parts' slots)."""
    written = [(f"{argument}{path}", p) for path, p in zip(params.paths, params.leaves)]
    written += [(f"state.slots[{name!r}]{path}", x) for name, leaves in slots.items()
                for path, x in zip(params.paths, leaves)]
    written += more
    for name, x in written:
        if adapter.overlaps_itself(x):
            raise ValueError(f"{name} has elements that share memory (a zero or overlapping stride, e.g. from "
                             "broadcast_to or expand); it cannot be updated in place: pass a copy, or use update()")
    spans = []
    for position, (_, x) in enumerate(written):
        bounds = adapter.memory_bounds(x)
        spans.append((bounds if bounds is not None else (0, 0), position))
    by_identity: dict[int, int] = {}
    for position, (name, x) in enumerate(written):
        if id(x) in by_identity:
            _shared(written[by_identity[id(x)]][0], name)
        by_identity[id(x)] = position
    spans.sort()
    for k, ((low, high), position) in enumerate(spans):  # neighbours by address: overlaps are adjacent
        for (other_low, _other_high), other in spans[k + 1:]:
            if other_low >= high:
                break
            if high > low and adapter.share_memory(written[position][1], written[other][1]):
                first, second = sorted((position, other))
                _shared(written[first][0], written[second][0])


def _shared(first: str, second: str) -> None:
    raise ValueError(f"{first} and {second} share memory; an in-place step would write it twice. Pass separate "
                     "arrays (the same array twice in a tree is refused; torch warns about it in a param group)")


def plan_for(rule: Rule, params: Any, grads: Any, state: State, writing: bool) -> tuple[Plan, tuple]:
    """The rule's cached plan for this step and the step's leaves; a new plan (every check
    run again) when anything differs from the cached one."""
    plans = rule.__dict__.setdefault("_plans", {})
    plan = plans.get(writing)
    if plan is not None:
        bound = plan.bind(params, grads, state)
        if bound is not None:
            return plan, bound
    plan = Plan(rule, params, grads, state, writing)
    bound = plan.bind(params, grads, state)
    if bound is None:  # the full checks passed, so the signature must match
        raise RuntimeError("portopt internal error: a fresh plan does not match its own inputs")
    plans[writing] = plan
    return plan, bound


def transformed_grads(plan: Plan, given: Sequence, made: Any) -> list:
    """The gradient leaves a transform (``chain``'s, clipping's) ``made`` from those it was
    ``given``, checked: as many, each of the given one's shape, dtype and device (the plan and
    its compiled loop were made for those; another would be misread). A compiled leaf's
    gradient that lost the plain memory the loop reads (a view) is copied. (An in-place step
    then passes them through :meth:`Plan.unshared_grads`: a transform may hand back what the
    step writes.)"""
    if not isinstance(made, (list, tuple)) or len(made) != len(given):
        raise TypeError(f"a gradient transform must return a list of {len(given)} gradient leaves, got "
                        f"{type(made).__name__}" + (f" of {len(made)}" if isinstance(made, (list, tuple)) else ""))
    adapter, checked = plan.adapter, []
    compiled_leaves = plan.compiled_leaves
    for index, (path, g, new) in enumerate(zip(plan.paths, given, made)):
        if (not hasattr(new, "shape") or tuple(new.shape) != tuple(g.shape) or getattr(new, "dtype", None) != g.dtype
                or adapter.device(new) != adapter.device(g)):
            raise ValueError(f"a gradient transform returned grads{path} as {_described(new)}; it must keep each "
                             f"gradient's shape, dtype and device ({_described(g)})")
        if index in compiled_leaves and adapter.address(g) is not None and adapter.address(new) is None:
            if not adapter.stageable(new):
                raise ValueError(f"a gradient transform returned grads{path} as {_described(new)}, which the "
                                 f"compiled step cannot read; return a plain array (or step with the fast path off)")
            new = adapter.staged_copy(new)
        checked.append(new)
    return checked


def _described(x: Any) -> str:
    if not hasattr(x, "shape") or not hasattr(x, "dtype"):
        return type(x).__name__
    return f"{type(x).__name__} of shape {tuple(x.shape)}, dtype {x.dtype}"


def step_scalars(rule: Rule, state: State, xp: Any, g_leaves: Sequence, p_leaves: Sequence,
                 evaluated: tuple | None = None) -> tuple[tuple, dict[str, float]]:
    """This step's host scalars and the new host state (Python floats, computed on the host);
    ``evaluated``: the rule's host_scalars of this step, if already evaluated
    (:func:`evaluate_first`)."""
    scalars: Any = evaluated if evaluated is not None else rule.host_scalars(state.step)  # first: see remember
    extra, new_host = rule.advance_host_state(state.step, dict(state.host), xp, g_leaves, p_leaves)
    return (scalars._replace(**extra) if extra else scalars), new_host


def evaluate_first(rule: Rule, state: Any) -> tuple | None:
    """The rule's host scalars for this step (its schedules are user code, which may move or
    replace arrays), evaluated before any check of the arrays so no check can be undone by it;
    None where the state is not one this rule's step could take (its checks then say why, as
    for a first step)."""
    if type(state) is not State or type(state.step) is not int or state.step < 0 or state.rule != rule.name:
        return None
    slot_names, host_names = rule.state_names()
    if (state.torn or not isinstance(state.slots, dict) or not isinstance(state.host, dict)
            or state.slots.keys() != slot_names or state.host.keys() != host_names):
        return None
    return rule.host_scalars(state.step)


def prepare_repeat(rule: Rule, plan: Plan, params: Any, grads: Any, state: State,
                   evaluated: tuple | None = None, *, leaves: tuple[Sequence, Sequence[Sequence]] | None = None,
                   transform: Callable[[Plan, list], list] | None = None
                   ) -> tuple[Callable[[], None] | None, tuple | None]:
    """Everything of a repeated in-place step but its writes: ``(write, host scalars)``, where
    ``write`` runs the writes (and counts the step), or is None, nothing having been done,
    unless the step can be repeated; the host scalars are this step's, evaluated first (or
    ``evaluated``, given), for the full step to reuse.

    It can when the params and slots are the arrays the last step of ``plan`` wrote, in the
    same memory (bind compares each one's memory_layout with the plan's), and every signature
    is unchanged: the last step's address table is reused, with the gradients' row filled
    again when they are new arrays, and on torch at every step (a tensor can move and stay the
    same object); the gradients are then checked, as in the full step, not to share memory
    with anything the step writes. Staged arrays (strided views) get new C-order copies, and
    their new values are written back after the loop. What remains per step is
    :meth:`Plan.bind`, the host scalars and the loop. ``leaves``: ``(param leaves, slot
    leaves)`` already collected, in the plan's order (``params`` is then unused and ``grads`` is
    the list of gradient leaves), as the drop-in's lane keeps them; they are checked as
    :meth:`Plan.bind` checks collected leaves.
    ``transform``: a chain's gradient transform (clipping), applied to the gradients once they
    are checked, as the full step applies it (:func:`transformed_grads`)."""
    group = plan.groups[0]
    last = group.last_tables
    if last is None or rule.skip_nonfinite:  # skip_nonfinite: the full step, its skip counts and copies
        return None, evaluated
    if evaluated is None:
        evaluated = evaluate_first(rule, state)
        if evaluated is None:
            return None, None
    if leaves is None:
        bound = plan.bind(params, grads, state)
    else:
        bound = plan.bind_leaves(leaves[0], grads, leaves[1]) if plan.takes_state(state) else None
    if bound is None:
        return None, evaluated
    p_leaves, g_leaves, slot_leaves = bound
    count = len(p_leaves)
    written = (*p_leaves, *(x for leaves in slot_leaves for x in leaves))
    last_arrays, read, write = last
    if len(last_arrays) != count + len(written) or not (all(map(operator.is_, written[:count], last_arrays))
                                                        and all(map(operator.is_, written[count:],
                                                                    last_arrays[2 * count:]))):
        return None, evaluated
    staged = group.staged
    if (transform is not None or not plan.remembers
            or not all(map(operator.is_, g_leaves, last_arrays[count:2 * count]))):
        if plan.unshared_grads(p_leaves, g_leaves, slot_leaves, written) is not g_leaves:
            return None, evaluated  # a gradient shares memory with what the step writes: the full step copies it
        if transform is not None:  # a transform may hand back what the step writes: copied then
            made = transformed_grads(plan, g_leaves, transform(plan, list(g_leaves)))
            g_leaves = plan.unshared_grads(p_leaves, made, slot_leaves, written)
        read = read.copy()
        for column, g in enumerate(g_leaves):
            if (1, column) not in staged:
                read[1, column] = plan.address(g, None)
        group.last_tables = ((*p_leaves, *g_leaves, *written[count:]), read, write)
    copies = _stage(plan, group, read, (p_leaves, g_leaves, *slot_leaves)) if staged else ()
    scalars, new_host = step_scalars(rule, state, plan.xp, g_leaves, p_leaves, evaluated)
    loops = group.loops(rule.kernel, scalars, len(slot_leaves))
    values = loops.scalars(scalars)
    table = group.compiled_table
    adapter = plan.adapter

    def run() -> None:
        try:
            loops.run(table, read, None, values)
            if copies:
                _write_back(adapter, copies)
            state.host = new_host
            state.step += 1
        except BaseException:
            state.torn = True
            raise

    return run, evaluated


def repeat_update(rule: Rule, plan: Plan, params: Any, grads: Any, state: State,
                  transform: Callable[[Plan, list], list] | None = None
                  ) -> tuple[tuple[Any, State] | None, tuple | None]:
    """update's lane, beside :func:`prepare_repeat`: ``(result, host scalars)``, where ``result``
    is this update's ``(new_params, new_state)``, or None, nothing having been done, unless it
    matches ``plan`` (one compiled call, the last update's): then what remains is the host
    scalars, :meth:`Plan.bind` (every signature), fresh arrays and the loop. The host scalars
    are this step's, evaluated first, for the full update to reuse. ``transform``: as for
    :func:`prepare_repeat`."""
    evaluated = evaluate_first(rule, state)
    if evaluated is None:
        return None, None
    bound = plan.bind(params, grads, state)
    if bound is None:
        return None, evaluated
    p_leaves, g_leaves, slot_leaves = bound
    if transform is not None:
        g_leaves = transformed_grads(plan, g_leaves, transform(plan, list(g_leaves)))
    scalars, new_host = step_scalars(rule, state, plan.xp, g_leaves, p_leaves, evaluated)
    group = plan.groups[0]
    loops = group.loops(rule.kernel, scalars, len(slot_leaves))
    read, write, fresh, copies = _fresh_tables(plan, group, p_leaves, g_leaves, slot_leaves)
    loops.run(group.compiled_table, read, write, loops.scalars(scalars))
    del copies  # held while the loop read them
    count = len(p_leaves)  # one group: every leaf, in order
    return fresh_result(rule, plan, state, fresh[:count], [fresh[k:k + count] for k in range(count, len(fresh), count)],
                        new_host), evaluated


def fresh_result(rule: Rule, plan: Plan, state: State, new_params: list, new_slots: list[list],
                 new_host: dict[str, float]) -> tuple[Any, State]:
    """update's ``(new_params, new_state)`` from the new leaves of params and of each slot."""
    build = plan.build
    return build(new_params), State(rule=rule.name, step=state.step + 1,
                                    slots={name: build(leaves) for name, leaves in zip(plan.slot_names, new_slots)},
                                    skipped=state.skipped, host=new_host)


class ScalarCache:
    """0-d arrays of host scalars per dtype; a number is made into an array again only when
    its value changed since the last step (most hyperparameters never do)."""

    def __init__(self) -> None:
        self._last: dict[Any, tuple[tuple, tuple]] = {}

    def materialise(self, xp: Any, scalars: tuple, dtype: Any, device: Any) -> tuple:
        last = self._last.get(dtype)
        if last is None or type(last[0]) is not type(scalars):
            made = materialise(xp, scalars, dtype, device)
        else:
            previous, arrays = last
            flags, _ = scalar_fields(type(scalars))
            values = []
            for index, value in enumerate(scalars):
                if index in flags:
                    values.append(value)
                elif _same(value, previous[index]):
                    values.append(arrays[index])
                else:
                    values.append(xp.asarray(float(value), dtype=dtype, device=device))
            made = type(scalars)(*values)
        self._last[dtype] = (scalars, made)
        return made


def _same(x: Any, y: Any) -> bool:
    """Same Python value and, for zeros, the same sign."""
    return type(x) is type(y) and x == y and (x != 0 or math.copysign(1.0, x) == math.copysign(1.0, y))


def run_group(plan: Plan, group: Group, kernel: Any, scalars: tuple, cache: ScalarCache,
              p_leaves: Sequence, g_leaves: Sequence, slot_leaves: Sequence[Sequence],
              outputs: list | None, remembered: dict[int, tuple[Any, int]]) -> Callable[[], None] | None:
    """Step the leaves of ``group``. For ``update`` (``outputs`` a list), append ``(index,
    new_p, [new slots])`` for each leaf to ``outputs``. In place (``outputs`` None), do
    everything that can fail or allocate and return the writes, to be run once every group
    is prepared: the reference path's new values are computed here, the compiled path's
    address tables built. Addresses of the arrays the next step reads go into ``remembered``."""
    executor = group.executor
    slot_count = len(slot_leaves)
    in_place = outputs is None
    if executor in _TABLED:
        loops = group.loops(kernel, scalars, slot_count, "host" if plan.adapter.name == "numpy" else "device")
        if in_place and plan.repeats:
            indexes = group.indexes  # p, g, then each slot, of every leaf (prepare_repeat's order too)
            arrays = (*(p_leaves[i] for i in indexes), *(g_leaves[i] for i in indexes),
                      *(leaves[i] for leaves in slot_leaves for i in indexes))
            last = group.last_tables
            copies: list[tuple[Any, Any]] = []
            if (plan.remembers and last is not None and not group.staged and len(last[0]) == len(arrays)
                    and all(map(operator.is_, arrays, last[0]))):
                read, write = last[1], last[2]
                remembered.update(plan.known)  # the same params and slots as last step
            else:
                read, write, copies = _tables(plan, group, p_leaves, g_leaves, slot_leaves, remembered, None)
                group.last_tables = (arrays, read, write)  # a staged entry: last step's copy's address
        else:
            read, write, copies = _tables(plan, group, p_leaves, g_leaves, slot_leaves, remembered, outputs)
        values = loops.scalars(scalars)
        table = group.compiled_table
        where = {"device": plan.device} if executor == "cuda" else {}
        if where:
            loops.prepare(in_place, plan.device)  # compiled before any write
        if not in_place:  # (a staged array's copy, in copies, is held while the loop reads it)
            loops.run(table, read, write, values, **where)
            return None
        if not copies:
            return lambda: loops.run(table, read, None, values, **where)
        adapter = plan.adapter

        def staged_writes() -> None:
            loops.run(table, read, None, values)
            _write_back(adapter, copies)

        return staged_writes
    if executor == "blocked":
        adapter = plan.adapter
        host_dtype = group.host_dtype
        assert host_dtype is not None

        def view(x: Any, writeable: bool) -> np.ndarray:
            flat = adapter.flat_host_view(x, writeable)
            assert flat is not None, "planned for the blocked path, which needs a host view"
            return flat

        s = cache.materialise(numpy_namespace().raw, scalars, host_dtype, "cpu")
        views = [(view(p_leaves[index], True), view(g_leaves[index], False),
                  [view(leaves[index], True) for leaves in slot_leaves]) for index in group.indexes]

        def blocked_writes() -> None:
            for p, g, slots in views:
                run_blocked(kernel, s, host_dtype, p, g, slots)

        return blocked_writes
    # reference
    xp = plan.xp
    s = cache.materialise(xp, scalars, group.dtype, plan.device)
    computed = []
    for index in group.indexes:
        p0, g = p_leaves[index], g_leaves[index]
        slots = [leaves[index] for leaves in slot_leaves]
        p, namespace = p0, plan.namespace
        if group.dtype != p0.dtype:
            p, g = xp.astype(p0, group.dtype), xp.astype(g, group.dtype)
            namespace = with_param_storage(namespace, p0.dtype, group.dtype)
        # a state_dtype other than the compute dtype: read exactly, written back rounded
        computing = [x if x.dtype == group.dtype else xp.astype(x, group.dtype) for x in slots]
        new_p, *new_slots = kernel(namespace, s, p, g, *computing)
        if new_p.dtype != p0.dtype:
            new_p = xp.astype(new_p, p0.dtype)
        new_slots = [x if x.dtype == old.dtype else xp.astype(x, old.dtype) for x, old in zip(new_slots, slots)]
        if in_place:
            computed.append((p0, new_p, slots, new_slots))
        else:
            assert outputs is not None
            # no input comes back, and no two outputs share memory (ASGD's ax can be its new p):
            # a later in-place step on them would refuse them
            taken = [p0, g_leaves[index], *slots]
            fresh_p = _fresh(plan.adapter, xp, new_p, tuple(taken))
            taken.append(fresh_p)
            fresh_slots = []
            for x in new_slots:
                fresh_slots.append(_fresh(plan.adapter, xp, x, tuple(taken)))
                taken.append(fresh_slots[-1])
            outputs.append((index, fresh_p, fresh_slots))
    if not in_place:
        return None
    write_into = plan.adapter.write

    def reference_writes() -> None:
        for p0, new_p, slots, new_slots in computed:
            write_into(p0, new_p)
            for x, value in zip(slots, new_slots):
                write_into(x, value)

    return reference_writes


@contextlib.contextmanager
def interrupts_deferred(enabled: bool = True) -> Iterator[None]:
    """Within the block, Ctrl-C (SIGINT) is held and raised as KeyboardInterrupt when the block
    ends, so a write phase runs to its end. Main thread only (others never see SIGINT), and
    only where Python's own handler or a callable one is installed. Costs two system calls,
    so the repeat lane's single loop goes without (an interrupt there marks the state torn).
    Through ``_signal``, the C functions the ``signal`` module wraps: its wrappers turn every
    handler into an enum and back, ten times the cost of the calls (15 µs a step)."""
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = _raw_signal.getsignal(_SIGINT)
    if not callable(previous):
        yield
        return
    received: list = []
    _raw_signal.signal(_SIGINT, lambda number, frame: received.append((number, frame)))
    try:
        yield
    finally:
        _raw_signal.signal(_SIGINT, previous)
        if received:
            previous(*received[0])


try:
    _raw_signal: Any = importlib.import_module("_signal")  # CPython's; what ``signal`` wraps
except ImportError:  # another Python: the wrapped functions
    _raw_signal = signal
_SIGINT = int(signal.SIGINT)


def _tables(plan: Plan, group: Group, p_leaves: Sequence, g_leaves: Sequence, slot_leaves: Sequence[Sequence],
            remembered: dict, outputs: list | None) -> tuple[np.ndarray, np.ndarray, list[tuple[Any, Any]]]:
    """The address tables of one compiled call: ``read`` (p, g, slots) and ``write`` (p and
    the slots in place; for update, fresh arrays, appended to ``outputs``), and, in place,
    ``(array, its staged copy)`` for each written array the call steps through a copy."""
    if outputs is not None:
        read, write, fresh, copies = _fresh_tables(plan, group, p_leaves, g_leaves, slot_leaves)
        count = len(group.indexes)
        outputs.extend((index, fresh[column], fresh[column + count::count])
                       for column, index in enumerate(group.indexes))
        return read, write, copies
    read = group.compiled_table.read.copy()
    rows = (p_leaves, g_leaves, *slot_leaves)
    staged = group.staged
    for row, leaves in enumerate(rows):
        for column, index in enumerate(group.indexes):
            if (row, column) not in staged:
                read[row, column] = plan.address(leaves[index], remembered if row != 1 else None)
    copies = _stage(plan, group, read, rows)
    return read, np.concatenate((read[:1], read[2:])), copies


def _stage(plan: Plan, group: Group, read: np.ndarray, rows: Sequence[Sequence]) -> list[tuple[Any, Any]]:
    """Fill ``read``'s staged entries with the addresses of new C-order copies of those arrays
    (``rows``: the leaves of p, g and each slot); returns ``(array, copy)`` for each one, the
    gradients' with ``array`` None (only read). The caller holds them while the loop runs and
    writes each written array's copy back into it after the loop."""
    copies = []
    for row, column in group.staged:
        x = rows[row][group.indexes[column]]
        copy = plan.adapter.staged_copy(x)
        read[row, column] = plan.adapter.planned_address(copy)
        copies.append((None if row == 1 else x, copy))
    return copies


def _write_back(adapter: Adapter, copies: Sequence[tuple[Any, Any]]) -> None:
    """The staged written arrays' new values, from their copies (:func:`_stage`)."""
    for array, copy in copies:
        if array is not None:
            adapter.write(array, copy)


def _fresh_tables(plan: Plan, group: Group, p_leaves: Sequence, g_leaves: Sequence,
                  slot_leaves: Sequence[Sequence]) -> tuple[np.ndarray, np.ndarray, list, list]:
    """update's address tables, ``read`` (p, g, slots) and ``write``, the fresh arrays
    written (p, then each slot, of every leaf of the group: one row each), and the staged
    arrays' copies read (to be held while the loop runs), all addresses read
    in one call (:meth:`Adapter.planned_addresses`): one by one, they cost more than a small
    step's loop."""
    indexes = group.indexes
    empty, device = plan.adapter.empty, plan.device
    arrays = [leaves[i] for leaves in (p_leaves, g_leaves, *slot_leaves) for i in indexes]
    count = len(indexes)
    fresh = [empty(x.shape, x.dtype, device) for x in arrays[:count] + arrays[2 * count:]]
    rows = group.compiled_table.read.shape[0]  # p, g, each slot; then p and each slot written
    addresses = plan.adapter.planned_addresses(arrays + fresh).reshape(2 * rows - 1, count)
    read = addresses[:rows]  # a staged array's entry: its copy's address, filled in by _stage
    return read, addresses[rows:], fresh, _stage(plan, group, read, (p_leaves, g_leaves, *slot_leaves))


def _fresh(adapter: Adapter, xp: Any, x: Any, inputs: tuple) -> Any:
    """``x`` as an array that shares no memory with any of ``inputs`` (update never returns a
    caller's array, nor two outputs over one buffer: an ndarray subclass's results can be two
    views of one, which a later in-place step would refuse as sharing memory)."""
    x = xp.asarray(x)
    if any(adapter.share_memory(x, a) for a in inputs):
        return xp.asarray(x, copy=True)
    return x
