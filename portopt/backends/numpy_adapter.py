"""NumPy: its ufuncs are correctly rounded; writes go through ``np.copyto``."""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable, Sequence
from typing import Any

import array_api_compat
import numpy as np

from .base import Adapter, strided_bounds, strides_overlap

# The flags a step depends on: C-contiguous, aligned, writeable (not OWNDATA: views are fine).
_STEP_FLAGS = 0x0001 | 0x0100 | 0x0400


def _pointer_field(x: np.ndarray) -> ctypes.c_void_p:
    """The ``data`` pointer field of the array object itself: NumPy's ``PyArrayObject``
    starts with the object header, then the ``data`` pointer (numpy/ndarraytypes.h); its
    ``.value`` reads the pointer as it is now."""
    return ctypes.c_void_p.from_address(id(x) + _HEADER_SIZE)


def _data_field(x: np.ndarray) -> int:
    """``x.ctypes.data`` read straight from the array object (:func:`_pointer_field`). Five
    times cheaper than building ``x.ctypes``, which matters when a whole step takes a few
    microseconds; used only if it agrees with ``x.ctypes.data`` here (checked at import)."""
    return _pointer_field(x).value or 0


_HEADER_SIZE = object.__basicsize__


def _data_field_agrees() -> bool:
    base = np.arange(12.0).reshape(3, 4)
    samples = [base, base[1:], base[2], np.zeros(()), np.zeros(0), np.ones(5, np.float32)]
    return all(_data_field(x) == x.ctypes.data for x in samples)


_address = _data_field if _data_field_agrees() else (lambda x: x.ctypes.data)


@functools.cache
def _field_reader() -> Callable[[Sequence[Any]], np.ndarray] | None:
    """``addresses(arrays)``: the data pointers of many arrays in one compiled call (numba,
    reading the field :func:`_data_field` reads), or None where numba is missing or that field
    is not where this NumPy keeps the pointer. Checked against ``x.ctypes.data`` first."""
    if _address is not _data_field:
        return None
    try:
        from portopt.kernels.pointers import read_fields
    except ImportError:
        return None

    def addresses(arrays: Sequence[Any]) -> np.ndarray:
        return read_fields(np.fromiter(map(id, arrays), np.int64, len(arrays)), _HEADER_SIZE)

    samples = [np.zeros(3), np.zeros((2, 2), np.float32)[1], np.zeros(())]
    if addresses(samples).tolist() != [x.ctypes.data for x in samples]:
        return None
    return addresses


class NumpyAdapter(Adapter):
    name = "numpy"

    @classmethod
    def handles(cls, xp: Any) -> bool:
        return array_api_compat.is_numpy_namespace(xp)

    def label(self, device: Any) -> str:
        return "numpy"

    def device(self, x: Any) -> Any:
        return "cpu"  # array_api_compat.device's answer for every ndarray, without asking

    def is_writeable(self, x: Any) -> bool:
        return isinstance(x, np.ndarray) and x.flags.writeable

    def signature(self, x: Any) -> tuple:
        return (type(x), x.shape, x.dtype, x.flags.num & _STEP_FLAGS)

    def address(self, x: Any) -> int | None:
        if type(x) is not np.ndarray or not x.flags.c_contiguous:
            return None
        return _address(x)

    def planned_address(self, x: Any) -> int | None:
        # the signature holds the type and the C-contiguous flag
        return _address(x)

    def planned_addresses(self, arrays: Sequence[Any]) -> np.ndarray:
        # the compiled reader reads the field of exact ndarrays only (a planned array is one)
        reader = _field_reader()
        if reader is None or any(type(x) is not np.ndarray for x in arrays):
            return super().planned_addresses(arrays)
        return reader(arrays)

    def stageable(self, x: Any) -> bool:
        return type(x) is np.ndarray  # any strides; not a subclass (the reference path keeps its arithmetic)

    def staged_copy(self, x: Any) -> np.ndarray:
        return np.array(x, order="C", subok=False)

    def layout_watch(self, x: Any) -> Any:
        # the data pointer field itself: with the shape, dtype and C order that the signature
        # holds, it is the layout (resize(refcheck=False) moves it, and nothing else can)
        if _address is _data_field and type(x) is np.ndarray and x.flags.c_contiguous:
            return _pointer_field(x)
        return None

    def memory_layout(self, x: Any) -> Any:
        if type(x) is not np.ndarray:
            return None
        if x.flags.c_contiguous:
            return _address(x), x.nbytes
        return _address(x), x.shape, x.strides

    def memory_bounds(self, x: Any) -> tuple[int, int] | None:
        if not isinstance(x, np.ndarray):
            return None
        if x.flags.c_contiguous:
            start = _address(x)
            return start, start + x.nbytes
        return strided_bounds(_address(x), x.shape, x.strides, x.itemsize)

    def overlaps_itself(self, x: Any) -> bool:
        return isinstance(x, np.ndarray) and strides_overlap(x.shape, x.strides, x.itemsize)

    def share_memory(self, a: Any, b: Any) -> bool:
        return a is b or (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and bool(np.shares_memory(a, b)))

    def empty(self, shape: tuple[int, ...], dtype: Any, device: Any) -> np.ndarray:
        return np.empty(shape, dtype)

    def write(self, destination: np.ndarray, source: Any) -> None:
        np.copyto(destination, source, casting="no")

    def multiply_into(self, x: np.ndarray, factor: Any) -> None:
        # no temporary: as x * factor, element by element (one thread: it is bound by memory
        # bandwidth, and splitting a ResNet-50 tree's arrays between two threads measured slower)
        np.multiply(x, factor, out=x)

    def flat_host_view(self, x: Any, writeable: bool) -> np.ndarray | None:
        if not isinstance(x, np.ndarray) or not x.flags.c_contiguous or (writeable and not x.flags.writeable):
            return None
        return x.reshape(-1)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.array(x, copy=True)

    def from_numpy(self, array: np.ndarray, device: Any = None) -> np.ndarray:
        return np.array(array, copy=True)
