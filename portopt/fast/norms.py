"""The fixed-order sum of squares of :mod:`portopt.reductions`, compiled.

The pairwise tree (element ``2i`` plus element ``2i+1``, level by level, an odd last
element carried up) is built in one pass over each array. Aligned blocks of 1024 elements
are whole subtrees: each is summed level by level in a scratch buffer (a loop LLVM
vectorises). Block sums and the elements after the last whole block enter a stack of
partial sums, as a binary counter: two nodes of one level are added as soon as both exist,
and at the end a node left alone is carried up to the level of the node before it and added
to it (left + right). The additions are those of the level-by-level definition, in the same
order, so the bits are the same (tests/test_clipping_and_schedules.py checks it on random
sizes).
Squares are rounded in the array's own dtype, float32 or float64, as the definition does.
"""

from __future__ import annotations

import functools
import math
import os
from typing import Any

import numpy as np

from ..backends import adapter_for
from ..kernels import cpu as compiled
from ..numerics import dtype_name
from ..reductions import pairwise_sum_of_squares

__all__ = ["sums_of_squares", "pairwise_sum", "sum_of_squares"]

_SOURCE = '''
import numba
import numpy as np
from numba import carray

from portopt.kernels.pointers import {dtype}_pointer as pointer

BLOCK_LEVELS = 10  # aligned blocks of 1024 elements are whole subtrees, summed level by level


@numba.njit(fastmath=False, error_model="numpy", nogil=True, cache=True)
def _push(levels, values, top, level, value):
    # a node enters the stack; two nodes of one level (siblings 2i, 2i+1) are added at once
    while top > 0 and levels[top - 1] == level:
        top -= 1
        value = values[top] + value
        level += 1
    levels[top] = level
    values[top] = value
    return top + 1


@numba.njit(fastmath=False, error_model="numpy", nogil=True, cache=True)
def _sum(x, n, square, levels, values, scratch):
    # the fixed-order sum of x[:n] (squared first if square), n >= 1
    block = 1 << BLOCK_LEVELS
    top = 0
    whole = n // block
    for b in range(whole):
        start = b * block
        for i in range(block):
            v = x[start + i]
            scratch[i] = v * v if square else v
        width = block
        for _ in range(BLOCK_LEVELS):
            width //= 2
            for i in range(width):
                scratch[i] = scratch[2 * i] + scratch[2 * i + 1]
        top = _push(levels, values, top, BLOCK_LEVELS, scratch[0])
    for i in range(whole * block, n):
        v = x[i]
        top = _push(levels, values, top, 0, v * v if square else v)
    while top > 1:  # a node left alone is carried up to the one before it: left + right
        top -= 1
        values[top - 1] = values[top - 1] + values[top]
    return values[0]


@numba.njit(fastmath=False, error_model="numpy", nogil=True, cache=True)
def pairwise_sums(addresses, sizes, out, square):
    levels = np.empty(64, dtype=np.int64)
    values = np.empty(64, dtype=out.dtype)
    scratch = np.empty(1 << BLOCK_LEVELS, dtype=out.dtype)
    for j in range(sizes.shape[0]):
        n = sizes[j]
        out[j] = _sum(carray(pointer(addresses[j]), n), n, square, levels, values, scratch) if n else 0.0


@numba.njit(fastmath=False, error_model="numpy", nogil=True, cache=True)
def total_of_squares(addresses, sizes, out):
    # out[0]: the fixed-order sum of the arrays' sums of squares (pairwise_sums, then the
    # same sum over them): one call for a small tree, where each call costs more than its work
    sums = np.empty(sizes.shape[0], dtype=out.dtype)
    pairwise_sums(addresses, sizes, sums, True)
    levels = np.empty(64, dtype=np.int64)
    values = np.empty(64, dtype=out.dtype)
    scratch = np.empty(1 << BLOCK_LEVELS, dtype=out.dtype)
    out[0] = _sum(sums, sums.shape[0], False, levels, values, scratch)
'''


@functools.cache
def _module(dtype: Any) -> Any:
    """The compiled loops for ``dtype`` (a NumPy dtype or its name; cached per either form)."""
    name = np.dtype(dtype).name
    return compiled.load_module(_SOURCE.format(dtype=name), f"norm_{name}")


def _loop(dtype: Any) -> Any:
    return _module(dtype).pairwise_sums


def sums_of_squares(addresses: list[int], sizes: list[int], dtype: np.dtype) -> np.ndarray:
    """Per array (given by address and size, all of ``dtype``): the fixed-order sum of its
    squared elements, rounded in ``dtype``; an empty array gives +0. Large totals are split
    between threads by array (each array's sum is its own)."""
    loop = _loop(dtype)
    out = np.empty(len(sizes), dtype=dtype)
    addresses_, sizes_ = np.asarray(addresses, dtype=np.int64), np.asarray(sizes, dtype=np.int64)
    parts = _split(sizes_)
    if len(parts) == 1:
        loop(addresses_, sizes_, out, True)
        return out
    futures = [compiled.pool().submit(loop, addresses_[a:b], sizes_[a:b], out[a:b], True) for a, b in parts]
    for future in futures:
        future.result()
    return out


def _split(sizes: np.ndarray) -> list[tuple[int, int]]:
    """Contiguous ranges of arrays with about equal numbers of elements, one per thread."""
    total = int(sizes.sum())
    workers = min(os.cpu_count() or 1, sizes.shape[0]) if total >= compiled.PARALLEL_THRESHOLD else 1
    if workers <= 1:
        return [(0, sizes.shape[0])]
    ends = np.searchsorted(np.cumsum(sizes), [total * k / workers for k in range(1, workers)], side="left") + 1
    bounds = [0, *sorted(set(int(e) for e in ends if 0 < e < sizes.shape[0])), sizes.shape[0]]
    return [(a, b) for a, b in zip(bounds, bounds[1:]) if b > a]


def pairwise_sum(values: np.ndarray) -> Any:
    """The fixed-order sum of a contiguous 1-D float32/float64 array, as a 0-d array."""
    values = np.ascontiguousarray(values)
    out = np.empty(1, dtype=values.dtype)
    _loop(values.dtype)(np.asarray([values.ctypes.data], dtype=np.int64),
                             np.asarray([values.shape[0]], dtype=np.int64), out, False)
    return out.reshape(())


def sum_of_squares(xp: Any, leaves: list, dtype: Any) -> Any:
    """:func:`portopt.reductions.pairwise_sum_of_squares` (same bits), compiled where the
    leaves are contiguous host arrays of the norm's dtype and the fast path is not off;
    else the array implementation. A 0-d array of ``dtype`` on the leaves' device."""
    if leaves and compiled_norm_runs():
        adapter = adapter_for(xp)
        host = np.dtype(dtype_name(xp, dtype))
        if host in (np.float32, np.float64) and all(leaf.dtype == dtype for leaf in leaves):
            found = [adapter.address(leaf) for leaf in leaves]
            addresses = [address for address in found if address is not None]
            if len(addresses) == len(found):
                sizes = [math.prod(leaf.shape) for leaf in leaves]
                if sum(sizes) < compiled.PARALLEL_THRESHOLD:  # one thread: one call
                    total = np.empty(1, dtype=host)
                    _module(host).total_of_squares(np.array(addresses, dtype=np.int64),
                                                   np.array(sizes, dtype=np.int64), total)
                    total = total.reshape(())
                else:
                    total = pairwise_sum(sums_of_squares(addresses, sizes, host))
                if adapter.name == "numpy":  # a new array already
                    return total
                return adapter.from_numpy(np.asarray(total), adapter.device(leaves[0]))
    return pairwise_sum_of_squares(xp, leaves, dtype)


def compiled_norm_runs() -> bool:
    """Whether the compiled sum of squares serves this process (the fast path is not off, numba is there)."""
    from . import get_mode

    return get_mode() in ("auto", "compiled") and compiled.available()
