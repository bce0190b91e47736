"""The plain array-API adapter; backend adapters override only what differs."""

from __future__ import annotations

from typing import Any

import array_api_compat
import numpy as np

from portopt.numerics import RuleNamespace


class Adapter:
    """Behaviour of a backend that follows the array API standard and nothing more.

    ``xp`` is the namespace ``array_api_compat.array_namespace`` returned for the arrays.
    """

    name = "array-api"

    def __init__(self, xp: Any) -> None:
        self.xp = xp

    @classmethod
    def handles(cls, xp: Any) -> bool:
        return True

    def label(self, device: Any) -> str:
        """Backend and device in a few words, e.g. 'torch-cpu'."""
        return getattr(self.xp, "__name__", self.name)

    def rule_namespace(self, device: Any) -> RuleNamespace:
        """The namespace the rules compute with on ``device``: every primitive correctly rounded."""
        return RuleNamespace(self.xp, self.primitive_overrides(device))

    def primitive_overrides(self, device: Any) -> dict:
        """Functions of this backend that are not correctly rounded, replaced. None here."""
        return {}

    def device(self, x: Any) -> Any:
        return array_api_compat.device(x)

    def is_writeable(self, x: Any) -> bool:
        try:
            return bool(array_api_compat.is_writeable_array(x))
        except TypeError:
            return False

    def signature(self, x: Any) -> tuple:
        """What a cached step plan re-checks on every step, cheaply: anything a full check
        looks at (type, shape, dtype, device, writeability). Equal signatures mean the
        full check would pass again."""
        return (type(x), tuple(x.shape), x.dtype, array_api_compat.device(x), self.is_writeable(x))

    def address(self, x: Any) -> int | None:
        """The address of ``x``'s elements if they are host memory in C order with no
        pending view transform (the compiled loops read and write there), else None."""
        return None

    def empty(self, shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
        """A new uninitialised array (the outputs of ``update``)."""
        return self.xp.empty(shape, dtype=dtype, device=device)

    def write(self, destination: Any, source: Any) -> None:
        """Copy ``source`` into ``destination``'s memory, wherever it lives (views too)."""
        destination[...] = source

    def flat_host_view(self, x: Any, writeable: bool) -> np.ndarray | None:
        """A flat NumPy view of ``x``'s own memory for the CPU fast paths, or None if there is none."""
        return None

    def to_numpy(self, x: Any) -> np.ndarray:
        """A host NumPy copy of ``x`` with the same bits (buffer protocol, else DLPack)."""
        try:
            return np.array(x, copy=True)
        except (TypeError, ValueError, RuntimeError):
            return np.array(np.from_dlpack(x), copy=True)

    def from_numpy(self, array: np.ndarray, device: Any = None) -> Any:
        """A copy of ``array`` on this backend and ``device``, same bits (never sharing memory)."""
        array = np.array(array, copy=True)
        return self.xp.asarray(array, device=device) if device is not None else self.xp.asarray(array)
