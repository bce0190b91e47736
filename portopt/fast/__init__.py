"""CPU fast paths for the in-place ``step``, derived from each rule's one kernel.

Modes: ``"compiled"`` (a numba loop generated from the traced kernel; float32/float64),
``"blocked"`` (the kernel itself on cache-sized blocks, on threads; every dtype),
``"auto"`` (compiled where it applies and numba is installed, else blocked) and ``"off"``
(the reference: the kernel on whole arrays). Every mode gives the reference bits; the
conformance suite runs under each (``portopt conformance --fast-path MODE``).

Fast paths take NumPy arrays and CPU torch tensors that are contiguous (their memory
seen flat); anything else takes the reference path.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

import numpy as np

from ..numerics import dtype_name
from . import compiled
from .blocked import run_blocked

__all__ = ["MODES", "get_mode", "set_mode", "fast_path", "FastStep"]

MODES = ("auto", "compiled", "blocked", "off")
_mode = os.environ.get("PORTOPT_FAST_PATH", "auto")
if _mode not in MODES:
    raise ValueError(f"PORTOPT_FAST_PATH must be one of {MODES}, got {_mode!r}")


def get_mode() -> str:
    return _mode


def set_mode(mode: str) -> None:
    """Choose the fast path for every later ``step`` in this process."""
    global _mode
    if mode not in MODES:
        raise ValueError(f"fast path mode must be one of {MODES}, got {mode!r}")
    if mode == "compiled" and not compiled.available():
        raise ValueError("fast path 'compiled' needs numba: pip install 'portopt[fast]'")
    _mode = mode


@contextlib.contextmanager
def fast_path(mode: str) -> Iterator[None]:
    """``with portopt.fast_path("off"): ...`` — a mode for the duration of the block."""
    previous = _mode
    set_mode(mode)
    try:
        yield
    finally:
        set_mode(previous)


class FastStep:
    """The fast path for one step of one rule: what can be prepared once is, then each leaf runs."""

    def __init__(self, kernel: Any, host_values: Any, adapter: Any) -> None:
        self.kernel, self.host_values, self.adapter = kernel, host_values, adapter
        self.mode = _mode
        self._prepared: dict = {}

    def _prepare(self, compute: Any, slot_count: int) -> tuple:
        key = (compute, slot_count)
        if key not in self._prepared:
            dtype = np.dtype(dtype_name(self.adapter.xp, compute))
            loops = None
            if self.mode in ("auto", "compiled") and compiled.available() and dtype in (np.float32, np.float64):
                loops = compiled.compiled_loops(self.kernel, self.host_values, slot_count, dtype)
            self._prepared[key] = (dtype, loops)
        return self._prepared[key]

    def run(self, compute: Any, p: Any, g: Any, slots: list) -> bool:
        """One leaf's in-place step; False if no fast path applies (the caller runs the reference)."""
        if self.mode == "off":
            return False
        adapter = self.adapter
        p_view = adapter.flat_host_view(p, writeable=True)
        g_view = adapter.flat_host_view(g, writeable=False)
        slot_views = [adapter.flat_host_view(x, writeable=True) for x in slots]
        if p_view is None or g_view is None or any(v is None for v in slot_views):
            return False
        dtype, loops = self._prepare(compute, len(slots))
        if loops is not None and p_view.dtype == dtype:
            loops.run(p_view, g_view, slot_views)
        elif self.mode == "compiled":
            return False
        else:
            run_blocked(self.kernel, self.host_values, dtype, p_view, g_view, slot_views)
        return True
