"""One thin adapter per backend: how to recognise its arrays, write in place, move to host.

No optimizer math lives here. :func:`adapter_for` picks the adapter for a namespace;
anything not recognised gets the plain array-API adapter.
"""

from __future__ import annotations

from typing import Any

from .base import Adapter
from .cupy_adapter import CupyAdapter
from .dask_adapter import DaskAdapter
from .numpy_adapter import NumpyAdapter
from .strict_adapter import StrictAdapter
from .torch_adapter import TorchAdapter

__all__ = ["Adapter", "adapter_for", "ADAPTERS"]

# Most specific first; the plain Adapter is the fallback for any array-API namespace.
ADAPTERS: tuple[type[Adapter], ...] = (NumpyAdapter, TorchAdapter, CupyAdapter, StrictAdapter, DaskAdapter)


def adapter_for(xp: Any) -> Adapter:
    """The adapter for the (array_api_compat) namespace ``xp`` (the plain one for None: an empty tree)."""
    if xp is None:
        return Adapter(xp)
    for adapter_class in ADAPTERS:
        if adapter_class.handles(xp):
            return adapter_class(xp)
    return Adapter(xp)
