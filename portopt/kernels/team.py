"""Large compiled calls on torch's own OpenMP threads, where torch runs on GNU OpenMP.

After each parallel torch operation, libgomp's worker threads keep spinning for a while (its
default wait policy), waiting for the next parallel region. A step that starts its own threads
then contends with them for the cores: on 2 cores it ran ~1.5-2x slower right after a torch
operation than alone (``python -m benchmarks.omp_wait``). Run as a parallel region of the same
runtime instead, the step is the work those threads wait for: ``GOMP_parallel`` (libgomp's
entry for ``#pragma omp parallel``) calls a compiled C function on every thread of the calling
thread's team, with as many threads as torch uses (``torch.set_num_threads``). The loop, and so
every bit, is the one the thread pool runs; only who runs which chunk changes.

Used only when torch is imported and its parallel backend is OpenMP with libgomp loaded in the
process (Linux builds); otherwise :func:`parallel` is None and the caller uses its thread pool.
Never in a forked child of a process that had torch loaded: libgomp's team threads do not
survive ``fork`` and a parallel region there would wait for them forever (the child's own
pool is made afresh instead).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path

__all__ = ["parallel"]


def parallel() -> Callable[[int, int], None] | None:
    """``run(entry, data)``: the C function at ``entry`` called as ``entry(data)`` on every thread
    of an OpenMP team of torch's runtime (the GIL released meanwhile); None where there is none."""
    if "torch" not in sys.modules:  # not imported (yet): asked again next time
        return None
    if os.getpid() != _PROCESS or _inherited_torch:
        return None  # a forked child: the parent's OpenMP threads are not here
    if getattr(getattr(sys.modules["torch"], "__spec__", None), "_initializing", False):
        return None  # another thread is importing it: decided once it is whole
    return _torch_team()


# The process this module was imported in; a fork after that has another pid.
_PROCESS = os.getpid()
# Imported first in a child multiprocessing started, with torch already there: perhaps forked
# from a process that ran torch's OpenMP, which cannot be told apart here, so no team.
_inherited_torch = "torch" in sys.modules and (
    (multiprocessing := sys.modules.get("multiprocessing")) is not None and multiprocessing.parent_process() is not None)


@functools.cache
def _torch_team() -> Callable[[int, int], None] | None:
    torch = sys.modules["torch"]
    try:
        if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
            return None
    except Exception:  # noqa: BLE001 - a torch without the query: no team
        return None
    library = _loaded_libgomp(Path(str(torch.__file__)).parent / "lib" / "libgomp.so.1")
    if library is None:
        return None
    entry = library.GOMP_parallel  # void GOMP_parallel(void (*fn)(void *), void *data, unsigned threads, unsigned flags)
    entry.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
    entry.restype = None

    threads = torch.get_num_threads

    def run(function: int, data: int) -> None:
        # torch's thread count, given each time: libgomp's own default is per thread, and torch
        # sets it in a thread only at that thread's first parallel operation
        entry(function, data, threads(), 0)

    return run


def _loaded_libgomp(bundled: Path) -> ctypes.CDLL | None:
    """torch's libgomp, only if it is already loaded: the copy its wheel bundles, else the one the
    system gives ``libgomp.so.1`` (a torch built against it)."""
    no_load = getattr(os, "RTLD_NOLOAD", None)
    if no_load is None:  # not a POSIX dynamic loader
        return None
    for name in ([str(bundled)] if bundled.exists() else []) + ["libgomp.so.1"]:
        try:
            return ctypes.CDLL(name, mode=no_load | os.RTLD_LAZY)
        except OSError:
            continue
    return None
