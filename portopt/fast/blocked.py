"""The blocked CPU fast path: the reference kernel on cache-sized slices, on a thread pool.

Any partition of an elementwise computation gives the same bits, so each block of
``BLOCK`` elements is computed with the rule's own kernel (NumPy's correctly rounded
ufuncs) and written back in place; NumPy releases the GIL, so two threads use two cores.
Scratch memory is a few blocks per thread, never full-size temporaries. Works for every
dtype (float16 computes in float32 block by block) and needs no compiler.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from ..kernels.cpu import pool  # one thread pool for every fast path (made afresh in a forked child)
from ..numerics import RuleNamespace, with_param_storage

__all__ = ["BLOCK", "run_blocked", "numpy_namespace"]

BLOCK = 1 << 15  # elements: a few of these per thread stay in L2


@functools.lru_cache(maxsize=1)
def numpy_namespace() -> RuleNamespace:
    import array_api_compat.numpy as xp

    return RuleNamespace(xp)


def run_blocked(kernel: Callable, s: Any, compute: np.dtype, p: np.ndarray, g: np.ndarray,
                slots: list[np.ndarray]) -> None:
    """One in-place step over flat contiguous arrays; ``p``/``g`` may be half precision.
    ``s``: the host scalars made NumPy 0-d arrays of ``compute``."""
    xp = numpy_namespace()
    if p.dtype != compute:
        xp = with_param_storage(xp, p.dtype, compute)

    def block(start: int) -> None:
        stop = min(start + BLOCK, p.shape[0])
        pb, gb = p[start:stop], g[start:stop]
        pc = pb if pb.dtype == compute else pb.astype(compute)
        gc = gb if gb.dtype == compute else gb.astype(compute)
        new_p, *new_slots = kernel(xp, s, pc, gc, *(slot[start:stop] for slot in slots))
        np.copyto(pb, new_p, casting="same_kind")
        for slot, value in zip(slots, new_slots):
            np.copyto(slot[start:stop], value)

    starts = range(0, p.shape[0], BLOCK)
    if len(starts) <= 1:
        for start in starts:
            block(start)
        return
    errors = np.geterr()  # the caller's np.errstate, which the pool's threads do not inherit

    def block_as_caller(start: int) -> None:
        with np.errstate(**errors):
            block(start)

    for future in [pool().submit(block_as_caller, start) for start in starts]:
        future.result()
