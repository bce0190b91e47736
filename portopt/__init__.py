"""portopt: optimizer update rules written once against the array API standard.

The same rule gives the same bits on NumPy, torch (CPU and CUDA), CuPy and any
array-API namespace. See README.md for the numerics contract.
"""

from __future__ import annotations

from .checkpoint import CheckpointError, load, save  # noqa: E402
from .clipping import Clipped, clip_by_global_norm, global_norm  # noqa: E402
from .divergence import DivergenceWarning  # noqa: E402
from .fast import fast_path  # noqa: E402
from .fast import get_mode as get_fast_path
from .fast import set_mode as set_fast_path
from .optimizer import CheckpointWarning, Rule  # noqa: E402
from .rules import (  # noqa: E402
    RULES,
    SGD,
    AdaBound,
    AdaDelta,
    AdaGrad,
    AdaGradNorm,
    Adam,
    Adamax,
    AdamW,
    AMSGrad,
    Lion,
    NAdam,
    RMSProp,
    SignSGD,
)
from .state import State  # noqa: E402
from .trees import flatten, tree_map, unflatten  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "Adam", "AdamW", "AMSGrad", "AdaGrad", "RMSProp", "SGD", "NAdam", "AdaDelta", "Adamax", "Lion",
    "AdaBound", "SignSGD", "AdaGradNorm", "RULES", "Rule", "State",
    "flatten", "unflatten", "tree_map", "save", "load", "CheckpointError", "CheckpointWarning",
    "fast_path", "get_fast_path", "set_fast_path", "Clipped", "clip_by_global_norm", "global_norm",
    "DivergenceWarning", "__version__",
]
