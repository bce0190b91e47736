"""The optimizer state: which rule made it, steps taken, and per-parameter slot arrays."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["State"]


@dataclass
class State:
    """State of one rule for one tree of parameters.

    ``slots`` maps a slot name (torch.optim's state key, e.g. ``'exp_avg'``) to a tree of
    arrays shaped like the parameters. ``step`` counts the steps taken; ``skipped`` the
    steps skipped for non-finite gradients (``skip_nonfinite=True``). ``host`` holds the
    few rules' state that is one number for the whole tree (AdaGrad-Norm's ``b²``), as
    Python floats (AdaGrad-Norm's ``b²``, NAdam's ``Πμ``). ``update`` returns a new State;
    ``step`` updates this one in place. ``torn`` is set if an in-place step was stopped while
    writing (params and state may hold part of it); a torn state is refused from then on.
    """

    rule: str
    step: int
    slots: dict[str, Any] = field(default_factory=dict)
    skipped: int = 0
    host: dict[str, float] = field(default_factory=dict)
    torn: bool = False
