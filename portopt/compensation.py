"""Kahan-compensated parameter updates: ``master_weights="kahan"`` on any rule.

For 16-bit params an update below half an ulp is lost when the new value is rounded; a
compensation slot keeps what rounding dropped and adds it back at the next step (Kahan
summation, as torch-optimi's bfloat16 training does). Per element, in the compute dtype::

    p'     <- the rule's new params (from p, g and its slots)
    total  <- compensation + (p' - p)
    stored <- round_to_params_dtype(p + total)
    compensation <- total - (stored - p)

Only correctly rounded operations, so the bits are the same on every backend and executor.
For params stored in the compute dtype the rounding is the identity and the compensation
catches the compute dtype's own rounding of ``p + total``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

__all__ = ["kahan_kernel", "COMPENSATION_SLOT"]

COMPENSATION_SLOT = "compensation"


@functools.cache
def kahan_kernel(kernel: Callable[..., tuple]) -> Callable[..., tuple]:
    """``kernel`` with a compensation slot (its last slot) added to the params' update."""

    def kahan(xp, s, p, g, *slots):
        *own, compensation = slots
        new_p, *new_slots = kernel(xp, s, p, g, *own)
        total = compensation + (new_p - p)
        stored = xp.round_like_params(p + total)
        return (stored, *new_slots, total - (stored - p))

    kahan.__qualname__ = f"kahan[{getattr(kernel, '__qualname__', kernel)}]"
    return kahan
