"""portopt: optimizer update rules written once against the array API standard.

The same rule gives the same bits on NumPy, torch (CPU and CUDA), CuPy and any
array-API namespace. See README.md for the numerics contract.
"""

from __future__ import annotations

from .accumulation import MultiSteps
from .checkpoint import CheckpointError, load, save
from .clipping import (
    Chain,
    ClipByGlobalNorm,
    ClipByValue,
    Clipped,
    chain,
    clip_by_global_norm,
    clip_by_global_norm_,
    global_norm,
)
from .divergence import DivergenceWarning
from .fast import fast_path
from .fast import get_mode as get_fast_path
from .fast import set_mode as set_fast_path
from .minimizer import minimize, scipy_method
from .optimizer import CheckpointWarning, Rule
from .partition import Partition, PartitionState, masked, partition
from .rules import *  # noqa: F403 - every rule, listed once in portopt.rules
from .rules import __all__ as _rules
from .state import State
from .trees import flatten, tree_map, unflatten

__version__ = "0.1.0"

__all__ = [
    *_rules, "Rule", "State",
    "flatten", "unflatten", "tree_map", "save", "load", "CheckpointError", "CheckpointWarning",
    "fast_path", "get_fast_path", "set_fast_path", "Clipped", "clip_by_global_norm", "clip_by_global_norm_", "global_norm",
    "DivergenceWarning", "__version__", "minimize", "scipy_method", "MultiSteps", "chain", "Chain",
    "ClipByGlobalNorm", "ClipByValue", "masked", "partition", "Partition", "PartitionState",
]
