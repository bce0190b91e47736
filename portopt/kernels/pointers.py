"""numba intrinsics that turn an address (an int64 from a table) into a typed pointer.

The multi-tensor loop receives the addresses of many leaves in one int64 table and views
each as an array with ``numba.carray(pointer(address), n)``.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

__all__ = ["float32_pointer", "float64_pointer", "uint16_pointer", "int64_pointer", "fetch_add", "read_fields"]


def _pointer_intrinsic(element: Any) -> Any:
    pointer_type = types.CPointer(element)

    def typer(typing_context: Any, address: Any) -> Any:
        def codegen(context: Any, builder: Any, signature: Any, arguments: Any) -> Any:
            return builder.inttoptr(arguments[0], context.get_value_type(pointer_type))

        return pointer_type(types.int64), codegen

    return intrinsic(typer)


float32_pointer = _pointer_intrinsic(types.float32)
float64_pointer = _pointer_intrinsic(types.float64)
uint16_pointer = _pointer_intrinsic(types.uint16)  # float16 and bfloat16, as their bits
int64_pointer = _pointer_intrinsic(types.int64)  # the address tables themselves


@intrinsic
def fetch_add(typing_context: Any, address: Any, value: Any) -> Any:
    """Atomically add ``value`` to the int64 at ``address``; the value it held before (the
    threads of a team take their next chunks from one such counter)."""

    def codegen(context: Any, builder: Any, signature: Any, arguments: Any) -> Any:
        pointer = builder.inttoptr(arguments[0], context.get_value_type(types.CPointer(types.int64)))
        return builder.atomic_rmw("add", pointer, arguments[1], "monotonic")

    return types.int64(types.int64, types.int64), codegen


@numba.njit(cache=True)
def read_fields(objects: np.ndarray, offset: int) -> np.ndarray:  # pragma: no cover - compiled
    """In place, each address of ``objects`` replaced by the int64 stored ``offset`` bytes past
    it: the data pointers of many NumPy array objects (``id(x)``) in one call."""
    for k in range(objects.shape[0]):
        objects[k] = int64_pointer(objects[k] + offset)[0]
    return objects
