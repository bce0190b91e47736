"""array-api-strict: the standard and nothing else, to prove the rules need nothing more."""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from .base import Adapter


class StrictAdapter(Adapter):
    name = "array_api_strict"

    @classmethod
    def handles(cls, xp: Any) -> bool:
        return array_api_compat.is_array_api_strict_namespace(xp)

    def label(self, device: Any) -> str:
        return "array_api_strict"

    def is_writeable(self, x: Any) -> bool:
        return True

    def signature(self, x: Any) -> tuple:
        # the standard's own attributes (array_api_compat.device asks every other library
        # first, which costs more than a small step's arithmetic here)
        return (type(x), x.shape, x.dtype, x.device, True)

    def write(self, destination: Any, source: Any) -> None:
        """Copy the elements into the NumPy array a strict array wraps: the same bits as
        ``destination[...] = source``, without the checks that make that (or a DLPack view)
        cost more than the rest of a small step. Falls back to ``__setitem__`` if a version
        of array-api-strict holds its data otherwise."""
        held, given = getattr(destination, "_array", None), getattr(source, "_array", None)
        if isinstance(held, np.ndarray) and isinstance(given, np.ndarray) and held.flags.writeable:
            np.copyto(held, given, casting="no")
        else:
            destination[...] = source

    def to_numpy(self, x: Any) -> np.ndarray:
        # The strict namespace exposes its data through the buffer protocol (DLPack).
        return np.array(np.from_dlpack(x), copy=True)
