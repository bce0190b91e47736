"""Dask arrays: every rule runs chunk by chunk through NumPy's ufuncs and stays lazy.

``update`` builds a graph and computes nothing; ``compute()`` gives NumPy's bits for any
chunking, because every operation of a rule is elementwise (the fixed-order norm slices
by element index, not by chunk). ``step`` works too (Dask's ``x[...] = y`` is lazy) but
grows a larger graph than ``update``.
"""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .base import Adapter


class DaskAdapter(Adapter):
    name = "dask"

    @classmethod
    def handles(cls, xp: Any) -> bool:
        return array_api_compat.is_dask_namespace(xp)

    def label(self, device: Any) -> str:
        return "dask"

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.array(x.compute(), copy=True)

    def from_numpy(self, array: np.ndarray, device: Any = None) -> Any:
        import dask.array as da

        return da.from_array(np.array(array, copy=True))
