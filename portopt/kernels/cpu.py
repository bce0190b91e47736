"""The compiled CPU fast path: a numba loop generated from the traced kernel, never hand-written.

The kernel is traced (portopt.trace) and each node becomes one statement of the loop body,
in the traced order. One loop serves every leaf count: it takes a table of the leaves'
addresses (one column per leaf) and sizes, cut into chunks, so a whole tree is one call (a
multi-tensor step). It reads from the ``read`` addresses and writes to the ``write`` ones,
so it serves the in-place ``step`` (write = read) and the pure ``update`` (write = fresh
arrays) alike. Large tables are split between threads by chunk (the loop releases the GIL):
on torch's own OpenMP threads where torch runs on libgomp (:mod:`portopt.kernels.team`), else on
portopt's thread pool.

numba compiles with ``fastmath=False``: LLVM then neither contracts ``a*b + c`` into an FMA
nor reorders, and ``math.sqrt`` is the correctly rounded instruction (tests/test_fast_paths.py
inspects the machine code for FMA instructions). Compiled loops are cached on disk
(:func:`cache_dir`), so later processes load them instead of compiling again (about half a
second per rule variant and dtype).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import sys
import threading
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..numerics import _tuple_getter
from . import team
from .trace import ARITHMETIC, COMPARISONS, Graph, Node, trace

__all__ = ["available", "loop_source", "Loops", "Table", "loops_for", "PARALLEL_THRESHOLD", "CHUNK", "cache_dir"]

# Below this many elements a step runs on one thread: starting threads costs more than it saves.
PARALLEL_THRESHOLD = 1 << 16
# The table loop cuts leaves into chunks of at most this many elements (its unit of parallel work).
CHUNK = 1 << 15


@functools.lru_cache(maxsize=1)
def available() -> bool:
    try:
        import numba  # noqa: F401
    except ImportError:
        return False
    return True


def cache_dir() -> Path:
    """Where generated loops and numba's compiled code are kept (``PORTOPT_CACHE_DIR``, else
    the user's cache folder), one subfolder per version of this generator and its helpers."""
    base = os.environ.get("PORTOPT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "portopt")
    here = Path(__file__).parent  # the generator and what its loops import
    generator = hashlib.sha256(b"".join((here / name).read_bytes()
                                        for name in ("cpu.py", "halves.py", "pointers.py"))).hexdigest()[:12]
    import numba

    return Path(base) / f"loops-{generator}-numba{numba.__version__}-py{sys.version_info[0]}{sys.version_info[1]}"


def _statement(node: Node, name: Callable[[Node], str]) -> str:
    a = [name(arg) for arg in node.args]
    op = node.op
    if op in ARITHMETIC:
        return f"{a[0]} {ARITHMETIC[op]} {a[1]}"
    if op in COMPARISONS:
        return f"{a[0]} {COMPARISONS[op]} {a[1]}"
    if op == "and":
        return f"{a[0]} & {a[1]}"  # bitwise on booleans: no branch, so the loop stays vectorisable
    if op == "or":
        return f"{a[0]} | {a[1]}"
    if op == "neg":
        return f"-{a[0]}"
    if op == "abs":
        return f"abs({a[0]})"
    if op == "sqrt":
        return f"math.sqrt({a[0]})"
    if op == "signbit":
        return f"math.copysign(1.0, {a[0]}) < 0.0"
    if op == "where":
        return f"{a[1]} if {a[0]} else {a[2]}"
    if op == "maximum":  # IEEE 754-2019: NaN propagates, +0 > -0 (as portopt.numerics.ieee_maximum)
        return (f"{a[0]} if (({a[0]} > {a[1]}) | ({a[0]} != {a[0]}) | "
                f"(({a[0]} == {a[1]}) & (math.copysign(1.0, {a[1]}) < 0.0))) else {a[1]}")
    if op == "minimum":
        return (f"{a[0]} if (({a[0]} < {a[1]}) | ({a[0]} != {a[0]}) | "
                f"(({a[0]} == {a[1]}) & (math.copysign(1.0, {a[0]}) < 0.0))) else {a[1]}")
    raise TypeError(f"no code for traced operation {op!r}")


def _outputs(graph: Graph) -> list[tuple[str, Node]]:
    """(written array, value) for each output: params, then the slots, in the kernel's order."""
    inputs = [str(node.name) for node in graph.arrays]
    return list(zip(inputs[:1] + inputs[2:], graph.outputs))


def _load(storage: str, compute: str, element: str) -> str:
    """An element read from an array of ``storage`` as a value of ``compute`` (exact)."""
    if storage in HALVES:
        return f"{HALVES[storage][0]}({element})"  # widening to float32 is exact
    return element if storage == compute else f"np.{compute}({element})"


def _store(storage: str, compute: str, value: str) -> str:
    """A value of ``compute`` rounded (to nearest, ties to even) into ``storage``."""
    if storage in HALVES:
        return f"{HALVES[storage][1]}({value})"
    return value if storage == compute else f"np.{storage}({value})"


def _body(graph: Graph, indent: str, storage: dict[str, str], compute: str) -> list[str]:
    """The statements of one element ``i``: read inputs ``r_<name>[i]``, write ``w_<name>[i]``."""

    def name(node: Node) -> str:
        return f"s_{node.name}" if node.op == "scalar" else f"v{node.index}"

    # Every element is read before anything is computed: a load after a select (a branch in
    # numba's IR) keeps LLVM from vectorising the in-place loop (Rprop's did not).
    lines = [f"{indent}v{node.index} = {_load(storage[str(node.name)], compute, f'r_{node.name}[i]')}"
             for node in graph.nodes if node.op == "input"]
    def statement(node: Node) -> str:
        if node.op == "round_param":  # to the params' storage and back: the identity if that is the compute dtype
            return _load(storage["p"], compute, _store(storage["p"], compute, name(node.args[0])))
        return _statement(node, name)

    lines += [f"{indent}v{node.index} = {statement(node)}" for node in graph.nodes
              if node.op not in ("input", "scalar")]
    for target, output in _outputs(graph):
        lines.append(f"{indent}w_{target}[i] = {_store(storage[target], compute, name(output))}")
    return lines


def loop_source(graph: Graph, compute: str, storage: tuple[str, ...] | None = None) -> str:
    """Python source of ``table_loop`` (writes to ``write``) and ``table_loop_in_place``
    (writes p and the slots where they are read) for one traced kernel, computing in
    ``compute`` (float32/float64) on arrays stored as ``storage`` (one dtype name per array:
    p, g, then the slots; float16 and bfloat16 only with float32, converted in the loop)."""
    inputs = [str(node.name) for node in graph.arrays]
    outputs = [target for target, _ in _outputs(graph)]
    storage = storage or (compute,) * len(inputs)
    if len(storage) != len(inputs) or any(d not in STORAGE for d in storage):
        raise ValueError(f"storage must name one of {sorted(STORAGE)} for each of {inputs}, got {storage}")
    if compute == "float64" and any(d in HALVES for d in storage):
        raise ValueError("half-precision storage computes in float32 (float64 would round twice)")
    by_name = dict(zip(inputs, storage))
    functions = []
    for name, in_place in (("table_loop", False), ("table_loop_in_place", True)):
        lines = [f"def {name}(read, write, sizes, chunk_leaf, chunk_start, chunk_stop, scalars):"]
        lines += [f"    s_{scalar} = scalars[{k}]" for k, scalar in enumerate(graph.scalar_names)]
        # Each chunk is viewed from its first element, so the element loop runs over
        # range(count): LLVM then knows the index is never negative and vectorises it. In
        # place, an array is written through the view it is read through: LLVM sees one
        # pointer, not two it would have to prove apart at run time.
        lines += ["    for c in range(chunk_leaf.shape[0]):",
                  "        j = chunk_leaf[c]",
                  "        start = chunk_start[c]",
                  "        count = chunk_stop[c] - start"]
        lines += [f"        r_{n} = carray({STORAGE[by_name[n]][0]}(read[{k}, j] + start * {STORAGE[by_name[n]][1]}), count)"
                  for k, n in enumerate(inputs)]
        if in_place:
            lines += [f"        w_{n} = r_{n}" for n in outputs]
        else:
            lines += [f"        w_{n} = carray({STORAGE[by_name[n]][0]}(write[{k}, j] + start * {STORAGE[by_name[n]][1]}), count)"
                      for k, n in enumerate(outputs)]
        lines += ["        for i in range(count):", *_body(graph, "            ", by_name, compute)]
        functions.append("\n".join(lines))
    return "\n\n\n".join(functions) + "\n"


# storage dtype: (pointer intrinsic, item size); half precision is read and written as uint16
STORAGE = {"float32": ("float32_pointer", 4), "float64": ("float64_pointer", 8),
           "float16": ("uint16_pointer", 2), "bfloat16": ("uint16_pointer", 2)}
# half precision: (widen to float32, narrow from float32) in portopt.kernels.halves
HALVES = {"float16": ("f16_to_f32", "f32_to_f16"), "bfloat16": ("bf16_to_f32", "f32_to_bf16")}


_HEADER = '''"""Generated by portopt.kernels.cpu from a rule's traced kernel (computing in {dtype}). Do not edit."""
import math

import numba
import numpy as np
from numba import carray

from portopt.kernels.halves import bf16_to_f32, f32_to_bf16
{float16_conversions}
from portopt.kernels.pointers import fetch_add, float32_pointer, float64_pointer, int64_pointer, uint16_pointer


'''


# The int64 fields a team's threads read their call from (TeamCall packs them, team_share reads them).
TEAM_FIELDS = ("read", "read_rows", "write", "write_rows", "leaves", "sizes", "chunk_leaf", "chunk_start",
               "chunk_stop", "chunks", "scalars", "scalar_count", "in_place", "next_chunk")

_TEAM_SHARE = '''

def team_share(address):
    """One thread's share of a table call on an OpenMP team: chunks taken one at a time from
    the call's counter until none is left (the fields: TEAM_FIELDS of portopt.kernels.cpu)."""
    call = carray(int64_pointer(address), ({fields},))
    leaves, chunks = call[{leaves}], call[{chunks}]
    read = carray(int64_pointer(call[{read}]), (call[{read_rows}], leaves))
    write = carray(int64_pointer(call[{write}]), (call[{write_rows}], leaves))
    sizes = carray(int64_pointer(call[{sizes}]), (leaves,))
    chunk_leaf = carray(int64_pointer(call[{chunk_leaf}]), (chunks,))
    chunk_start = carray(int64_pointer(call[{chunk_start}]), (chunks,))
    chunk_stop = carray(int64_pointer(call[{chunk_stop}]), (chunks,))
    scalars = carray({dtype}_pointer(call[{scalars}]), (call[{scalar_count}],))
    while True:
        k = fetch_add(address + 8 * {next_chunk}, 1)
        if k >= chunks:
            return
        if call[{in_place}]:
            table_loop_in_place(read, read, sizes, chunk_leaf[k:k + 1], chunk_start[k:k + 1], chunk_stop[k:k + 1], scalars)
        else:
            table_loop(read, write, sizes, chunk_leaf[k:k + 1], chunk_start[k:k + 1], chunk_stop[k:k + 1], scalars)


def team_entry():
    """team_share as a C function for libgomp's GOMP_parallel (compiled on first use, cached)."""
    return numba.cfunc("void(int64)", error_model="numpy", cache=True)(team_share)
'''


def _module_text(source: str, dtype: str) -> str:
    # error_model="numpy": IEEE results for x/0 and sqrt(-x) (the default raises, as Python does).
    footer = "".join(f'{name} = numba.njit(fastmath=False, error_model="numpy", nogil=True, cache=True)({name})\n'
                     for name in ("table_loop", "table_loop_in_place"))
    team = _TEAM_SHARE.format(dtype=dtype, fields=len(TEAM_FIELDS),
                              **{name: index for index, name in enumerate(TEAM_FIELDS)})
    return _HEADER.format(dtype=dtype, float16_conversions=_float16_conversions()) + source + "\n\n" + footer + team


@functools.cache
def _float16_conversions() -> str:
    """The float16 conversions the loops import: the CPU's (F16C: vcvtph2ps / vcvtps2ph,
    exact and round to nearest even) where it has them, else integer arithmetic on the bits
    (the same results; tests/test_halves.py checks both)."""
    import llvmlite.binding as llvm

    if llvm.get_host_cpu_features().get("f16c", False):
        return "from portopt.kernels.halves import f16_to_f32_hardware as f16_to_f32, f32_to_f16_hardware as f32_to_f16"
    return "from portopt.kernels.halves import f16_to_f32, f32_to_f16"


_load_lock = threading.Lock()


@functools.cache
def _module(source: str, dtype: str) -> Any:
    return load_module(_module_text(source, dtype), "loop")


@functools.cache
def load_module(text: str, tag: str) -> Any:
    """The module of generated source ``text``, written once into the cache folder and
    imported from there (numba caches compiled code only for functions that live in a file)."""
    digest = hashlib.sha256(text.encode()).hexdigest()[:24]
    folder = cache_dir()
    path = folder / f"{tag}_{digest}.py"
    with _load_lock:
        if not path.exists():
            folder.mkdir(parents=True, exist_ok=True)
            temporary = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
            temporary.write_text(text)
            os.replace(temporary, path)  # atomic: another process may be writing the same file
        name = f"portopt_generated_{digest}"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # numba's cache finds a function's module by name
        spec.loader.exec_module(module)
    return module


def uncached_module(loops: Loops) -> Any:
    """The loops of ``loops`` compiled afresh in memory (not from the disk cache), so their
    machine code can be inspected (tests/test_fast_paths.py looks for FMA instructions)."""
    namespace: dict[str, Any] = {}
    text = _module_text(loops.source, loops.dtype.name).replace("cache=True", "cache=False")
    exec(compile(text, "<portopt generated loop>", "exec"), namespace)  # noqa: S102 - our own source
    return types.SimpleNamespace(**namespace)


@functools.lru_cache(maxsize=1)
def pool() -> ThreadPoolExecutor:
    """The threads that share large compiled calls (the loops release the GIL); a forked child
    makes its own (the parent's threads are not in it, and work handed to them would wait)."""
    return ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="portopt-loop")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=pool.cache_clear)


class Loops:
    """The compiled loop of one kernel, flag combination and dtype, with its scalar order."""

    def __init__(self, source: str, scalar_names: list[str], scalar_positions: list[int], dtype: np.dtype) -> None:
        # dtype: the compute dtype (of the scalars); the arrays' storage is in the source
        # every output is written, a slot the kernel returns unchanged too (copied), so the
        # fresh arrays of update are complete
        self.source, self.scalar_names, self.dtype = source, scalar_names, dtype
        self._take = _tuple_getter(tuple(scalar_positions))

    @functools.cached_property
    def _module(self) -> Any:
        return _module(self.source, self.dtype.name)

    @functools.cached_property
    def _team_entry(self) -> Any:
        return self._module.team_entry()  # kept: libgomp calls its address

    def scalars(self, values: tuple) -> np.ndarray:
        """The numbers this loop reads, in its order, as values of its dtype."""
        return np.array(self._take(values), dtype=self.dtype)

    def run(self, table: Table, read: np.ndarray, write: np.ndarray | None, scalars: np.ndarray) -> None:
        """Every leaf of ``table``: ``read`` holds the addresses of p, g and the slots of each
        leaf (one column per leaf), ``write`` those of p and the slots to write (None: in place)."""
        if write is None:
            loop, write = self._module.table_loop_in_place, read
        else:
            loop = self._module.table_loop
        parts = table.parts
        if len(parts) == 1:
            loop(read, write, table.sizes, table.chunk_leaf, table.chunk_start, table.chunk_stop, scalars)
            return
        run_on_team = team.parallel()
        if run_on_team is not None:  # torch's OpenMP threads: the ones that are awake after its last operation
            call = np.array([read.ctypes.data, read.shape[0], write.ctypes.data, write.shape[0], read.shape[1],
                             table.sizes.ctypes.data, table.chunk_leaf.ctypes.data, table.chunk_start.ctypes.data,
                             table.chunk_stop.ctypes.data, table.chunk_leaf.shape[0], scalars.ctypes.data,
                             scalars.shape[0], int(write is read), 0], dtype=np.int64)
            run_on_team(self._team_entry.address, call.ctypes.data)
            return
        futures = [pool().submit(loop, read, write, table.sizes, table.chunk_leaf[a:b], table.chunk_start[a:b],
                                  table.chunk_stop[a:b], scalars) for a, b in parts]
        for future in futures:
            future.result()


class Table:
    """Sizes and chunks of a group of leaves, and empty address tables to fill per step
    (the caller keeps the arrays alive while a loop runs over their addresses)."""

    def __init__(self, sizes: list[int], slot_count: int) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.read = np.zeros((2 + slot_count, len(sizes)), dtype=np.int64)
        self.write = np.zeros((1 + slot_count, len(sizes)), dtype=np.int64)
        self.total = int(self.sizes.sum())
        self.chunk_leaf, self.chunk_start, self.chunk_stop = chunks(self.sizes)
        # chunk ranges for the threads: one unless there is enough work to share
        count = self.chunk_leaf.shape[0]
        workers = min(os.cpu_count() or 1, count) if self.total >= PARALLEL_THRESHOLD else 1
        bounds = [count * k // workers for k in range(workers + 1)]
        self.parts = [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a] or [(0, count)]


def chunks(sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each leaf cut into pieces of at most CHUNK elements: (leaf, start, stop) per piece."""
    pieces = np.maximum((sizes + CHUNK - 1) // CHUNK, 1)
    leaf = np.repeat(np.arange(sizes.shape[0], dtype=np.int64), pieces)
    first = np.cumsum(pieces) - pieces
    start = (np.arange(leaf.shape[0], dtype=np.int64) - first[leaf]) * CHUNK
    stop = np.minimum(start + CHUNK, sizes[leaf])
    return leaf, start, stop


def loops_for(kernel: Callable, scalars: tuple, slot_count: int, dtype: np.dtype,
              storage: tuple[str, ...] | None = None) -> Loops:
    """The loops of ``kernel`` for the flags of ``scalars``, computing in ``dtype``
    (float32/float64) on arrays stored as ``storage`` (default: all ``dtype``)."""
    from ..numerics import flags_of

    return _loops(kernel, type(scalars), flags_of(scalars), slot_count, np.dtype(dtype), storage)


@functools.cache
def _loops(kernel: Callable, scalars_type: Any, flags: tuple, slot_count: int, dtype: np.dtype,
           storage: tuple[str, ...] | None) -> Loops:
    from ..numerics import scalar_fields

    flag_positions, _ = scalar_fields(scalars_type)
    values: list[Any] = [0.0] * len(scalars_type._fields)
    for position, flag in zip(flag_positions, flags):
        values[position] = flag
    graph = trace(kernel, scalars_type(*values), slot_count)
    names = graph.scalar_names
    return Loops(loop_source(graph, dtype.name, storage), names,
                 [scalars_type._fields.index(name) for name in names], dtype)
