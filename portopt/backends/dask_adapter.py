"""Dask arrays: every rule runs chunk by chunk through NumPy's ufuncs and stays lazy.

``update`` builds a graph and computes nothing; ``compute()`` gives NumPy's bits for any
chunking, because every operation of a rule is elementwise (the fixed-order norm slices
by element index, not by chunk). ``step`` works too (Dask's ``x[...] = y`` is lazy) but
grows a larger graph than ``update``. Moving to and from the host is the plain adapter's
(``np.array`` computes a Dask array; ``asarray`` wraps a NumPy copy in one chunk).
"""

from __future__ import annotations

from typing import Any

import array_api_compat

from .base import Adapter


class DaskAdapter(Adapter):
    name = "dask"

    @classmethod
    def handles(cls, xp: Any) -> bool:
        return array_api_compat.is_dask_namespace(xp)

    def label(self, device: Any) -> str:
        return "dask"
