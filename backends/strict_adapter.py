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

    def write(self, destination: Any, source: Any) -> None:
        """Copy through DLPack views of both arrays' host memory: the same bits as
        ``destination[...] = source``, without the strict checks that make that cost as much
        as the rest of a small step."""
        try:
            np.copyto(np.from_dlpack(destination), np.from_dlpack(source), casting="no")
        except (TypeError, ValueError, BufferError, RuntimeError):  # no writeable host view after all
            destination[...] = source

    def to_numpy(self, x: Any) -> np.ndarray:
        # The strict namespace exposes its data through the buffer protocol (DLPack).
        return np.array(np.from_dlpack(x), copy=True)
