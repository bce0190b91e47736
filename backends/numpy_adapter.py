"""NumPy: its ufuncs are correctly rounded; writes go through ``np.copyto``."""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .base import Adapter


class NumpyAdapter(Adapter):
    name = "numpy"

    @classmethod
    def handles(cls, xp: Any) -> bool:
        return array_api_compat.is_numpy_namespace(xp)

    def label(self, device: Any) -> str:
        return "numpy"

    def is_writeable(self, x: Any) -> bool:
        return isinstance(x, np.ndarray) and x.flags.writeable

    def write(self, destination: np.ndarray, source: Any) -> None:
        np.copyto(destination, source, casting="no")

    def flat_host_view(self, x: Any, writeable: bool) -> np.ndarray | None:
        if not isinstance(x, np.ndarray) or not x.flags.c_contiguous or (writeable and not x.flags.writeable):
            return None
        return x.reshape(-1)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.array(x, copy=True)

    def from_numpy(self, array: np.ndarray, device: Any = None) -> np.ndarray:
        return np.array(array, copy=True)
