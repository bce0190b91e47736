"""CPU fast paths for ``step`` and ``update``, derived from each rule's one kernel.

Modes: ``"compiled"`` (numba loops generated from the traced kernel; float32/float64;
many leaves in one call), ``"blocked"`` (the kernel itself on cache-sized blocks, on
threads; every dtype; in-place ``step`` only), ``"auto"`` (compiled where it applies and
numba is installed, else blocked), ``"off"`` (the reference: the kernel on whole
arrays) and ``"shim"`` (NumPy arrays stepped by the generated CUDA source compiled for the
host, :mod:`portopt.kernels.device`: the GPU's statements, checked without a GPU). Every mode gives the reference bits; the conformance suite runs under each
(``portopt conformance --fast-path MODE``).

Fast paths take NumPy arrays and CPU torch tensors whose memory is contiguous; anything
else takes the reference path. :func:`set_mode` sets the process's mode; ``with
fast_path(...)`` overrides it in the current thread (or task) only, through a context
variable, so two threads in two ``with`` blocks do not change each other's mode.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Iterator

from ..kernels import cpu as compiled

__all__ = ["MODES", "get_mode", "set_mode", "fast_path"]

MODES = ("auto", "compiled", "blocked", "off", "shim")
_process_mode = os.environ.get("PORTOPT_FAST_PATH", "auto")
if _process_mode not in MODES:
    raise ValueError(f"PORTOPT_FAST_PATH must be one of {MODES}, got {_process_mode!r}")
_override: contextvars.ContextVar[str | None] = contextvars.ContextVar("portopt_fast_path", default=None)


def get_mode() -> str:
    return _override.get() or _process_mode


def _checked(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"fast path mode must be one of {MODES}, got {mode!r}")
    if mode == "compiled" and not compiled.available():
        raise ValueError("fast path 'compiled' needs numba: pip install 'portopt[fast]'")
    return mode


def set_mode(mode: str) -> None:
    """Choose the fast path for every later step in this process (outside ``fast_path`` blocks)."""
    global _process_mode
    _process_mode = _checked(mode)


@contextlib.contextmanager
def fast_path(mode: str) -> Iterator[None]:
    """``with portopt.fast_path("off"): ...`` — a mode for the duration of the block."""
    token = _override.set(_checked(mode))
    try:
        yield
    finally:
        _override.reset(token)
