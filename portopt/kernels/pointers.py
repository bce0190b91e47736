"""numba intrinsics that turn an address (an int64 from a table) into a typed pointer.

The multi-tensor loop receives the addresses of many leaves in one int64 table and views
each as an array with ``numba.carray(pointer(address), n)``.
"""

from __future__ import annotations

from typing import Any

from numba import types
from numba.extending import intrinsic

__all__ = ["float32_pointer", "float64_pointer", "uint16_pointer"]


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
