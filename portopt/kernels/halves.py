"""float16 and bfloat16 in the compiled loops: conversions by 32-bit integer arithmetic on the bits.

numba has no half-precision type, so the loops read and write 16-bit words and convert in
the loop: widening to float32 is exact; narrowing rounds to nearest, ties to even, with
subnormals, overflow to infinity and NaN handled as IEEE 754 says (a NaN stays a NaN; its
payload is outside portopt's contract). Each conversion is one numba intrinsic written as
LLVM IR on 32-bit integers with selects, no branch (numba's own integer arithmetic widens to
64 bits, which halves the vector lanes): LLVM vectorises the loops around them.
tests/test_halves.py checks them against NumPy's float16 and ml_dtypes' bfloat16 casts on
every 16-bit pattern and on float32 patterns around every rounding boundary (the long tier
adds a sixteenth of all 2**32).
"""

from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba import types
from numba.extending import intrinsic

__all__ = ["f16_to_f32", "f32_to_f16", "bf16_to_f32", "f32_to_bf16"]

_I32, _I16, _F32 = ir.IntType(32), ir.IntType(16), ir.FloatType()


def _c(value: int) -> ir.Constant:
    return ir.Constant(_I32, value)


@intrinsic
def f16_to_f32(typing_context: Any, half: Any) -> Any:
    """float16 bits (uint16) to float32, exactly."""
    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, arguments: Any) -> Any:
        word = builder.zext(arguments[0], _I32)
        sign = builder.shl(builder.and_(word, _c(0x8000)), _c(16))
        exponent = builder.and_(builder.lshr(word, _c(10)), _c(0x1F))
        mantissa = builder.and_(word, _c(0x3FF))
        # normal: rebias the exponent by 127 - 15; inf and NaN: the exponent all ones
        normal = builder.or_(builder.shl(builder.add(exponent, _c(112)), _c(23)), builder.shl(mantissa, _c(13)))
        special = builder.or_(_c(0x7F800000), builder.shl(mantissa, _c(13)))
        # subnormal: mantissa * 2**-24, exact in float32 (a normal number there)
        tiny = builder.fmul(builder.uitofp(mantissa, _F32), ir.Constant(_F32, 2.0 ** -24))
        bits = builder.select(builder.icmp_unsigned("==", exponent, _c(0)), builder.bitcast(tiny, _I32), normal)
        bits = builder.select(builder.icmp_unsigned("==", exponent, _c(0x1F)), special, bits)
        return builder.bitcast(builder.or_(bits, sign), _F32)

    return types.float32(types.uint16), codegen


@intrinsic
def f32_to_f16(typing_context: Any, value: Any) -> Any:
    """float32 to float16 bits (uint16), rounded to nearest, ties to even."""
    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, arguments: Any) -> Any:
        word = builder.bitcast(arguments[0], _I32)
        sign = builder.and_(builder.lshr(word, _c(16)), _c(0x8000))
        magnitude = builder.and_(word, _c(0x7FFFFFFF))
        nan = builder.icmp_unsigned(">", magnitude, _c(0x7F800000))
        # at or above 65520, halfway past the largest half (65504, odd): infinity
        overflow = builder.icmp_unsigned(">=", magnitude, _c(0x477FF000))
        # below 2**-14 the result is subnormal or zero: adding 0.5 puts the bits in place,
        # rounded to nearest even by the float adder (2**-24 is both spacings there)
        small = builder.icmp_unsigned("<", magnitude, _c(0x38800000))
        shifted = builder.fadd(builder.bitcast(magnitude, _F32), ir.Constant(_F32, 0.5))
        subnormal = builder.sub(builder.bitcast(shifted, _I32), _c(0x3F000000))
        # normal: rebias ((15 - 127) << 23, wrapping) and round the 13 dropped bits to even
        odd = builder.and_(builder.lshr(magnitude, _c(13)), _c(1))
        normal = builder.lshr(builder.add(builder.add(magnitude, _c(0xC8000FFF)), odd), _c(13))
        half = builder.select(small, subnormal, normal)
        half = builder.select(overflow, _c(0x7C00), half)
        half = builder.select(nan, _c(0x7E00), half)
        return builder.trunc(builder.or_(half, sign), _I16)

    return types.uint16(types.float32), codegen


@intrinsic
def bf16_to_f32(typing_context: Any, half: Any) -> Any:
    """bfloat16 bits (uint16) to float32, exactly: the high half of its bits."""
    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, arguments: Any) -> Any:
        return builder.bitcast(builder.shl(builder.zext(arguments[0], _I32), _c(16)), _F32)

    return types.float32(types.uint16), codegen


@intrinsic
def f32_to_bf16(typing_context: Any, value: Any) -> Any:
    """float32 to bfloat16 bits (uint16), rounded to nearest, ties to even; a NaN stays a (quiet) NaN."""
    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, arguments: Any) -> Any:
        word = builder.bitcast(arguments[0], _I32)
        high = builder.lshr(word, _c(16))
        rounded = builder.lshr(builder.add(builder.add(word, _c(0x7FFF)), builder.and_(high, _c(1))), _c(16))
        nan = builder.icmp_unsigned(">", builder.and_(word, _c(0x7FFFFFFF)), _c(0x7F800000))
        return builder.trunc(builder.select(nan, builder.or_(high, _c(0x0040)), rounded), _I16)

    return types.uint16(types.float32), codegen


@intrinsic
def f16_to_f32_hardware(typing_context: Any, half: Any) -> Any:
    """float16 bits (uint16) to float32 by LLVM's ``fpext half`` (F16C's vcvtph2ps), exactly."""
    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, arguments: Any) -> Any:
        return builder.fpext(builder.bitcast(arguments[0], ir.HalfType()), _F32)

    return types.float32(types.uint16), codegen


@intrinsic
def f32_to_f16_hardware(typing_context: Any, value: Any) -> Any:
    """float32 to float16 bits by LLVM's ``fptrunc`` (F16C's vcvtps2ph: round to nearest even
    under the default MXCSR, which numba and NumPy leave as it is)."""
    def codegen(context: Any, builder: ir.IRBuilder, signature: Any, arguments: Any) -> Any:
        return builder.bitcast(builder.fptrunc(arguments[0], ir.HalfType()), _I16)

    return types.uint16(types.float32), codegen
