"""Advice from the source notes, given as warnings of portopt's own category."""

from __future__ import annotations

import math
import warnings

__all__ = ["DivergenceWarning", "warn_if_beta1_too_large"]


class DivergenceWarning(UserWarning):
    """Hyperparameters for which the optimizer is known to diverge on some problems."""


def warn_if_beta1_too_large(betas: tuple[float, float]) -> None:
    """Zhang et al. (2022): Adam can diverge unless beta1 < sqrt(beta2); they advise a large beta2."""
    beta1, beta2 = betas
    if beta1 >= math.sqrt(beta2):
        warnings.warn(
            f"beta1 = {beta1} >= sqrt(beta2) = {math.sqrt(beta2):.6g}: Adam-type methods can diverge here "
            "(Zhang et al. 2022 advise a large beta2 and beta1 < sqrt(beta2))",
            DivergenceWarning,
            stacklevel=3,
        )
