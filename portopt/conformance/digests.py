"""Canonical bytes of an array, their SHA-256, hex bit patterns, ulp distances."""

from __future__ import annotations

import hashlib

import numpy as np

from ..numerics import host_dtype

__all__ = ["canonical", "digest", "hex_bits", "ulp_distance", "from_hex_bits"]

_UINT = {2: np.uint16, 4: np.uint32, 8: np.uint64}
_INT = {2: np.int16, 4: np.int32, 8: np.int64}


def canonical(array: np.ndarray) -> np.ndarray:
    """C-order, little-endian copy with every NaN replaced by the positive quiet NaN.

    NaN sign and payload are not part of the contract (IEEE 754 leaves them to the
    hardware: x86 makes negative NaNs, CUDA positive ones); every other bit is.
    """
    array = np.ascontiguousarray(array)
    if array.dtype.kind == "f" or array.dtype.name == "bfloat16":
        array = np.where(np.isnan(array), np.array(np.nan, dtype=array.dtype), array)
        array = np.ascontiguousarray(array)
    return array.astype(array.dtype.newbyteorder("<"), copy=False)


def digest(array: np.ndarray) -> str:
    """SHA-256 (hex) of the canonical bytes of ``array``."""
    return hashlib.sha256(canonical(array).tobytes()).hexdigest()


def hex_bits(array: np.ndarray) -> list[str]:
    """Each element's bit pattern as fixed-width hex, in C order (canonical NaN)."""
    array = canonical(array)
    width = array.dtype.itemsize * 2
    return [format(int(word), f"0{width}x") for word in array.view(_UINT[array.dtype.itemsize]).ravel()]


def from_hex_bits(words: list[str], dtype: str, shape: tuple[int, ...]) -> np.ndarray:
    np_dtype = host_dtype(dtype)
    bits = np.array([int(word, 16) for word in words], dtype=_UINT[np_dtype.itemsize])
    return bits.view(np_dtype).reshape(shape)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Number of representable values between ``a`` and ``b`` (0 for equal bits, -1 if a NaN is involved).

    Bit patterns are mapped to a monotone integer line (negative floats mirrored), so the
    distance across zero counts +0 and -0 as one step apart.
    """
    a, b = canonical(a), canonical(b)
    size = a.dtype.itemsize
    ia = a.view(_INT[size]).astype(object)  # Python ints: no overflow across the sign
    ib = b.view(_INT[size]).astype(object)
    sign_bit = 1 << (8 * size - 1)
    ia = np.where(ia < 0, -(ia + sign_bit) - 1, ia)
    ib = np.where(ib < 0, -(ib + sign_bit) - 1, ib)
    distance = np.abs(ia - ib)
    return np.where(np.isnan(a) | np.isnan(b), np.where(np.isnan(a) & np.isnan(b), 0, -1), distance)
