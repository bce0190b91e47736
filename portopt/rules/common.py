"""Pieces shared by several kernels."""

from __future__ import annotations

__all__ = ["sign", "SIGN_SCALARS", "effective_gradient"]

# Host scalars a kernel needs for `sign`.
SIGN_SCALARS = {"zero": 0.0, "one": 1.0}


def sign(xp, s, x):
    """``sign(x)``: +1 for x > 0, -1 for x < 0, x itself for ±0 and NaN (comparisons and where only)."""
    return xp.where(x > s.zero, s.one, xp.where(x < s.zero, -s.one, x))


def effective_gradient(s, p, g):
    """The gradient a rule steps with: ``g <- -g`` if maximize, then ``g <- g + wd * p`` (coupled L2)."""
    if s.maximize:
        g = -g
    if s.coupled_decay:
        g = g + s.weight_decay * p
    return g
