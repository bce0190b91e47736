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

__all__ = ["MODES", "get_mode", "set_mode", "fast_path", "step_leaf"]

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


def step_leaf(kernel: Any, host_values: Any, compute: Any, adapter: Any, p: Any, g: Any, slots: list) -> bool:
    """Run one leaf's in-place step on a fast path; False if none applies (the caller then runs the reference)."""
    if _mode == "off":
        return False
    views = [adapter.flat_host_view(x, writeable=True) for x in (p, *slots)]
    g_view = adapter.flat_host_view(g, writeable=False)
    if g_view is None or any(v is None for v in views):
        return False
    p_view, *slot_views = views
    compute = np.dtype(dtype_name(adapter.xp, compute))
    use_compiled = (_mode in ("auto", "compiled") and compiled.available() and p_view.dtype == compute
                    and compute in (np.float32, np.float64))
    if use_compiled:
        compiled.run_compiled(kernel, host_values, compute, p_view, g_view, slot_views)
    elif _mode == "compiled":
        return False
    else:
        run_blocked(kernel, host_values, compute, p_view, g_view, slot_views)
    return True
