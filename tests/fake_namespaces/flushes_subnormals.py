"""Arithmetic that flushes subnormal inputs and results to zero, as CUDA's -ftz does."""

import numpy as np

from ._core import flushing, make_namespace

globals().update(make_namespace(__name__, **{name: flushing(getattr(np, name))
                                            for name in ("add", "subtract", "multiply", "divide", "sqrt")}))
