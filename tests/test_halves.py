"""float16 and bfloat16 inside the compiled loops: the conversions are NumPy's and ml_dtypes'
casts bit for bit, and half-precision leaves take one compiled call with them.

Widening: all 65,536 patterns. Narrowing: float32 patterns on both sides of every rounding
boundary of every exponent (ties, one below, one above, the extremes of the dropped bits),
the whole subnormal-result range at its rounding positions, and a random sample; the long
tier adds every sixteenth float32 pattern (2**28 of them). (Every one of the 2**32 patterns
was checked once, 518 s on the 2-core machine; that run is not repeated here.)
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")
ml_dtypes = pytest.importorskip("ml_dtypes")

import numba  # noqa: E402

import portopt  # noqa: E402
from portopt.kernels import halves  # noqa: E402

CONVERSIONS = {
    "float16": [(halves.f16_to_f32, halves.f32_to_f16, "integer"),
                (halves.f16_to_f32_hardware, halves.f32_to_f16_hardware, "hardware")],
    "bfloat16": [(halves.bf16_to_f32, halves.f32_to_bf16, "integer")],
}
CASES = [pytest.param(name, widen, narrow, id=f"{name}-{kind}")
         for name, forms in CONVERSIONS.items() for widen, narrow, kind in forms]
DROPPED = {"float16": 13, "bfloat16": 16}  # mantissa bits a normal float32 loses


def _numpy_dtype(name):
    return np.float16 if name == "float16" else ml_dtypes.bfloat16


def _loops(widen, narrow):
    @numba.njit
    def widen_all(bits, out):
        for i in range(bits.shape[0]):
            out[i] = widen(bits[i])

    @numba.njit
    def narrow_all(values, out):
        for i in range(values.shape[0]):
            out[i] = narrow(values[i])

    return widen_all, narrow_all


def _boundary_patterns(dropped: int) -> np.ndarray:
    """float32 bit patterns around each rounding boundary: for every sign, exponent and the
    top 8 kept mantissa bits, the dropped bits at 0, 1, half - 1, half, half + 1, all ones."""
    half = 1 << (dropped - 1)
    low = np.array([0, 1, half - 1, half, half + 1, (1 << dropped) - 1], dtype=np.uint64)
    kept = np.arange(1 << (23 - dropped), dtype=np.uint64)
    kept = np.unique(np.concatenate([kept[:128], kept[-128:], kept[:: max(1, kept.size // 64)]]))
    exponents = np.arange(256, dtype=np.uint64)
    words = ((exponents[:, None, None] << 23) | (kept[None, :, None] << dropped) | low[None, None, :]).ravel()
    return np.concatenate([words, words | (1 << 31)]).astype(np.uint32)


def _subnormal_result_patterns() -> np.ndarray:
    """float32 values whose float16 is subnormal: the rounding position moves with the
    exponent, so every exponent from 2**-25 to 2**-15 with its own boundaries."""
    words = []
    for exponent in range(127 - 26, 127 - 14):
        dropped = 13 + (127 - 14 - exponent)  # bits below the float16 subnormal's last
        dropped = min(dropped, 24)
        half = 1 << (dropped - 1)
        for low in (0, 1, half - 1, half, half + 1, (1 << min(dropped, 23)) - 1):
            for kept in range(0, 1 << max(0, 23 - dropped), max(1, (1 << max(0, 23 - dropped)) // 64)):
                mantissa = ((kept << dropped) | low) & 0x7FFFFF
                words.append((exponent << 23) | mantissa)
    words = np.array(sorted(set(words)), dtype=np.uint32)
    return np.concatenate([words, words | np.uint32(1 << 31)])


def _check_narrowing(name, narrow_all, words):
    values = words.view(np.float32)
    got = np.empty(words.shape, np.uint16)
    narrow_all(values, got)
    with np.errstate(all="ignore"):
        want = values.astype(_numpy_dtype(name)).view(np.uint16)
    nan = np.isnan(values)
    exponent_bits = 0x7C00 if name == "float16" else 0x7F80
    assert ((got & 0x7FFF) > exponent_bits)[nan].all(), "a NaN did not stay a NaN"
    wrong = np.flatnonzero((got != want) & ~nan)
    assert wrong.size == 0, [(hex(words[i]), hex(got[i]), hex(want[i])) for i in wrong[:5]]


@pytest.mark.parametrize("name, widen, narrow", CASES)
def test_widening_every_pattern_is_exact(name, widen, narrow):
    widen_all, _ = _loops(widen, narrow)
    bits = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    got = np.empty(bits.shape, np.float32)
    widen_all(bits, got)
    want = bits.view(_numpy_dtype(name)).astype(np.float32)
    nan = np.isnan(want)
    assert np.isnan(got[nan]).all()
    assert (got.view(np.uint32)[~nan] == want.view(np.uint32)[~nan]).all()


@pytest.mark.parametrize("name, widen, narrow", CASES)
def test_narrowing_rounds_to_nearest_even_with_subnormals_overflow_and_nan(name, widen, narrow):
    _, narrow_all = _loops(widen, narrow)
    rng = np.random.default_rng(7)
    words = np.concatenate([_boundary_patterns(DROPPED[name]), _subnormal_result_patterns(),
                            rng.integers(0, 1 << 32, 1 << 20, dtype=np.uint64).astype(np.uint32),
                            np.array([0x7F800000, 0xFF800000, 0x7F7FFFFF, 0x477FEFFF, 0x477FF000, 0x477FF001,
                                      0x38800000, 0x387FFFFF, 0x33000000, 0x33000001, 0x32FFFFFF, 1], np.uint32)])
    _check_narrowing(name, narrow_all, words)


@pytest.mark.long
@pytest.mark.parametrize("name, widen, narrow", CASES)
def test_narrowing_a_sixteenth_of_every_float32_pattern(name, widen, narrow):
    _, narrow_all = _loops(widen, narrow)
    step = 1 << 26
    for start in range(0, 1 << 32, step):
        words = (np.arange(start, start + step, 16, dtype=np.uint64) + (start >> 26) % 16).astype(np.uint32)
        _check_narrowing(name, narrow_all, words)


def _executors(rule, params):
    state = rule.init(params)
    rule.step(params, params if not hasattr(params, "clone") else params.clone(), state)
    plans = rule.__dict__["_plans"]
    return [(g.executor, g.storage) for plan in plans.values() for g in plan.groups]


def test_float16_and_bfloat16_leaves_take_the_compiled_loop():
    with portopt.fast_path("compiled"):
        assert _executors(portopt.Adam(), np.ones(100, np.float16)) == [
            ("compiled", ("float16", "float16", "float32", "float32"))]
        torch = pytest.importorskip("torch")
        assert _executors(portopt.SGD(lr=0.1, momentum=0.9), torch.ones(100, dtype=torch.bfloat16)) == [
            ("compiled", ("bfloat16", "bfloat16", "float32"))]
