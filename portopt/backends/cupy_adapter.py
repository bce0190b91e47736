"""CuPy (GPU): arrays through array-api-compat; host copies through ``.get()``.

CuPy compiles every kernel with ``-ftz=true``, so its float32 ufuncs flush subnormals that
NumPy keeps: a step on contiguous CuPy arrays stored as the table kernel reads them runs the
generated CUDA source instead (:mod:`portopt.kernels.device`; the addresses below are device
pointers). Not yet verified on a GPU (docs/gpu.md); other layouts take the eager kernel, whose
flushed subnormals the conformance suite names instead of hiding.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .base import Adapter, strided_bounds, strides_overlap


class CupyAdapter(Adapter):
    name = "cupy"

    @classmethod
    def handles(cls, xp: Any) -> bool:
        return array_api_compat.is_cupy_namespace(xp)

    def label(self, device: Any) -> str:
        return "cupy"

    def is_writeable(self, x: Any) -> bool:
        return True

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.get()

    def address(self, x: Any) -> int | None:
        """The device address of a C-contiguous array (the table kernel's operand), else None."""
        return int(x.data.ptr) if x.flags.c_contiguous else None

    def memory_layout(self, x: Any) -> Any:
        if x.flags.c_contiguous:
            return int(x.data.ptr), x.nbytes, x.device.id
        return int(x.data.ptr), x.shape, x.strides, x.device.id

    def overlaps_itself(self, x: Any) -> bool:
        return strides_overlap(tuple(x.shape), tuple(x.strides), x.itemsize)

    def share_memory(self, a: Any, b: Any) -> bool:
        """Conservatively: whether the byte ranges meet (two interleaved views count as sharing)."""
        if a is b:
            return True
        first, second = self.memory_bounds(a), self.memory_bounds(b)
        return first is not None and second is not None and first[0] < second[1] and second[0] < first[1] \
            and first[1] > first[0] and second[1] > second[0]

    def memory_bounds(self, x: Any) -> tuple[int, int] | None:

        if x.flags.c_contiguous:
            start = int(x.data.ptr)
            return start, start + x.nbytes
        return strided_bounds(int(x.data.ptr), tuple(x.shape), tuple(x.strides), x.itemsize)

    def from_numpy(self, array: np.ndarray, device: Any = None) -> Any:
        import cupy

        if device is None:
            return cupy.asarray(array)
        with device:
            return cupy.asarray(array)
