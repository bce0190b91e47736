"""The multi-tensor step of the generated CUDA source: one launch per (rule variant, flags,
dtype) for every leaf of a group, from a table of addresses.

:class:`DeviceLoops` has the interface of the CPU's :class:`portopt.kernels.cpu.Loops`
(``scalars`` then ``run(table, read, write, scalars)``), so the plan's compiled path drives
both. Two targets run the same generated statements (:func:`portopt.kernels.cuda.cuda_table_source`):

- ``"device"``: CuPy's ``RawModule`` compiles the source once per variant, flags and dtype
  (cached; the inline-PTX helpers give IEEE rounding whatever CuPy's ``-ftz=true`` and
  ``--fmad=true`` say) and launches it on the arrays' device, one block per chunk.
- ``"host"``: the same source with IEEE C++ helpers (:mod:`portopt.kernels.host_shim`),
  called on NumPy arrays: the fast-path mode ``"shim"`` (``portopt.fast_path("shim")``), so
  that everything but the launch itself (tables, chunks, scalar order, in place and out of
  place) is checked against the golden vectors on any machine with a C++ compiler.

The table kernel reads p and g in the params' dtype and the slots in the compute dtype
(float32 for float16 and bfloat16 params), so a group runs here only when its arrays are stored so.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from .cpu import Table
from .cuda import TABLE_KERNEL_NAME, cuda_table_source
from .trace import trace

__all__ = ["DeviceLoops", "device_loops_for", "launcher_available", "stores_as_the_kernel_reads",
           "THREADS_PER_BLOCK", "SHIM_DTYPES"]

THREADS_PER_BLOCK = 256
_MAX_BLOCKS = 65535  # a grid-stride loop over the chunks covers any more
SHIM_DTYPES = ("float16", "bfloat16", "float32", "float64")  # the param dtypes the generated source has


def stores_as_the_kernel_reads(param_dtype: str, dtype_names: list[str]) -> bool:
    """Whether p, g and the slots (``dtype_names`` in that order) are stored as the table
    kernel reads them: p and g in the params' dtype, the slots in the compute dtype."""
    if param_dtype not in SHIM_DTYPES:
        return False
    compute = "float32" if param_dtype in ("float16", "bfloat16") else param_dtype
    return dtype_names[0] == dtype_names[1] == param_dtype and all(name == compute for name in dtype_names[2:])


class DeviceLoops:
    """The table kernel of one kernel, flag combination and param dtype, with its scalar order."""

    def __init__(self, kernel: Callable, scalars_type: Any, flags: tuple, slot_count: int, param_dtype: str,
                 target: str) -> None:
        from ..numerics import scalar_fields

        flag_positions, _ = scalar_fields(scalars_type)
        values: list[Any] = [0.0] * len(scalars_type._fields)
        for position, flag in zip(flag_positions, flags):
            values[position] = flag
        host_values = scalars_type(*values)
        names = trace(kernel, host_values, slot_count).scalar_names
        self.positions = tuple(scalars_type._fields.index(name) for name in names)
        self.dtype = np.dtype("float64" if param_dtype == "float64" else "float32")  # the scalars' (compute) dtype
        self.target = target
        self._functions: dict[tuple, Any] = {}
        self.sources = {in_place: cuda_table_source(kernel, host_values, slot_count, param_dtype,
                                                    TABLE_KERNEL_NAME, in_place, target)
                        for in_place in (True, False)}

    def scalars(self, values: tuple) -> np.ndarray:
        """The numbers the kernel reads, in its order, as values of its compute dtype."""
        return np.array([values[k] for k in self.positions], dtype=self.dtype)

    def run(self, table: Table, read: np.ndarray, write: np.ndarray | None, scalars: np.ndarray,
            device: Any = None) -> None:
        """Every leaf of ``table``: ``read`` holds the addresses of p, g and the slots of each
        leaf (one column per leaf), ``write`` those of p and the slots to write (None: in place).
        ``device``: the arrays' (a CuPy device, or a torch CUDA device: then on torch's current
        stream, so the step is ordered with the rest of the torch program)."""
        chunks = int(table.chunk_leaf.shape[0])
        if chunks == 0:
            return
        in_place = write is None
        if self.target == "host":
            self._run_on_host(table, read, read if write is None else write, scalars, chunks, in_place)
        else:
            self._launch(table, read, read if write is None else write, scalars, chunks, in_place, device)

    def prepare(self, in_place: bool, device: Any = None) -> None:
        """Compile the kernel this step launches now, before any write (a compile that fails
        then stops the step with nothing written)."""
        if self.target == "host":
            self._host_function(in_place)
        else:
            import cupy

            device_id, _ = _launch_site(device)
            with cupy.cuda.Device(device_id):
                self._device_function(in_place, device_id)

    def _run_on_host(self, table: Table, read: np.ndarray, write: np.ndarray, scalars: np.ndarray, chunks: int,
                     in_place: bool) -> None:
        function = self._host_function(in_place)
        arrays = (np.ascontiguousarray(read), np.ascontiguousarray(write), table.chunk_leaf, table.chunk_start,
                  table.chunk_stop)
        function(*(ctypes.c_void_p(a.ctypes.data) for a in arrays), ctypes.c_longlong(chunks),
                 ctypes.c_longlong(read.shape[1]), ctypes.c_void_p(scalars.ctypes.data))

    def _host_function(self, in_place: bool) -> Any:
        function = self._functions.get(("host", in_place))
        if function is None:
            from . import host_shim

            function = self._functions[("host", in_place)] = getattr(host_shim.build(self.sources[in_place]),
                                                                     TABLE_KERNEL_NAME)
        return function

    def _launch(self, table: Table, read: np.ndarray, write: np.ndarray, scalars: np.ndarray, chunks: int,
                in_place: bool, device: Any) -> None:
        import cupy

        device_id, stream = _launch_site(device)
        with cupy.cuda.Device(device_id), stream:
            function = self._device_function(in_place, device_id)
            on_device = _device_chunks(table, device_id)
            read_d = cupy.asarray(read)
            write_d = read_d if in_place else cupy.asarray(write)
            arguments = (read_d, write_d, *on_device, np.int64(chunks), np.int64(read.shape[1]),
                         cupy.asarray(scalars))
            function((min(chunks, _MAX_BLOCKS),), (THREADS_PER_BLOCK,), arguments)

    def _device_function(self, in_place: bool, device_id: int) -> Any:
        """Compiled once per source and device (CuPy keeps the binary in its own disk cache too)."""
        function = self._functions.get((device_id, in_place))
        if function is None:
            import cupy

            module = cupy.RawModule(code=self.sources[in_place])  # CuPy's own options; the PTX helpers fix the rounding
            function = self._functions[(device_id, in_place)] = module.get_function(TABLE_KERNEL_NAME)
        return function


def launcher_available() -> bool:
    """Whether CuPy, which launches the generated kernels, can be imported."""
    try:
        import cupy  # noqa: F401
    except ImportError:
        return False
    return True


def _launch_site(device: Any) -> tuple[int, Any]:
    """The device number and CuPy stream to launch on for arrays on ``device``: torch's
    current stream for a torch CUDA device, else CuPy's current stream."""
    import cupy

    if getattr(device, "type", None) == "cuda":  # a torch.device
        import torch

        index = device.index if device.index is not None else torch.cuda.current_device()
        return index, cupy.cuda.ExternalStream(torch.cuda.current_stream(index).cuda_stream, index)
    device_id = getattr(device, "id", None)
    return (cupy.cuda.Device().id if device_id is None else device_id), cupy.cuda.get_current_stream()


def _device_chunks(table: Table, device_id: int) -> tuple[Any, Any, Any]:
    """The table's chunk arrays on the device, copied once per table and device."""
    import cupy

    kept = table.__dict__.setdefault("_on_device", {})
    arrays = kept.get(device_id)
    if arrays is None:
        arrays = kept[device_id] = tuple(cupy.asarray(a) for a in (table.chunk_leaf, table.chunk_start,
                                                                   table.chunk_stop))
    return arrays


@functools.cache
def _device_loops(kernel: Callable, scalars_type: Any, flags: tuple, slot_count: int, param_dtype: str,
                  target: str) -> DeviceLoops:
    return DeviceLoops(kernel, scalars_type, flags, slot_count, param_dtype, target)


def device_loops_for(kernel: Callable, scalars: tuple, slot_count: int, param_dtype: str, target: str) -> DeviceLoops:
    """The table kernel of ``kernel`` for the flags of ``scalars`` (flags change between steps:
    SGD's first step), for params of ``param_dtype``, on ``target`` ("device" or "host")."""
    from ..numerics import flags_of

    return _device_loops(kernel, type(scalars), flags_of(scalars), slot_count, param_dtype, target)
