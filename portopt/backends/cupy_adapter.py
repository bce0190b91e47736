"""CuPy (GPU): arrays through array-api-compat; host copies through ``.get()``.

Not yet verified on a GPU (docs/gpu.md): CuPy compiles every kernel with ``-ftz=true``, so its
float32 ufuncs flush subnormals that NumPy keeps. Until flush-free primitives
land, the conformance suite names that defect instead of hiding it.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .base import Adapter


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

    def from_numpy(self, array: np.ndarray, device: Any = None) -> Any:
        import cupy

        if device is None:
            return cupy.asarray(array)
        with device:
            return cupy.asarray(array)
