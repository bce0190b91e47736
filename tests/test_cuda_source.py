"""The generated CUDA kernels, without a GPU: NVRTC compiles every one with CuPy's flags and
its PTX holds no FMA, no flush-to-zero and no approximate instruction; and the same source,
compiled for the CPU (each inline-PTX helper an IEEE C++ operation), gives NumPy's bits.
Launching them needs a GPU (docs/gpu.md)."""

from __future__ import annotations

import ctypes
import re
import shutil
import subprocess

import numpy as np
import pytest

import portopt
from helpers import VARIANTS, make_rule, same_bits_any_nan, variant_id
from portopt.kernels import host_shim, nvrtc
from portopt.kernels.cpu import chunks
from portopt.kernels.cuda import cuda_source, cuda_table_source
from portopt.kernels.trace import trace

DTYPES = ["float16", "float32", "float64"]
COMPILED_DTYPES = [*DTYPES, "bfloat16"]  # bfloat16 runs on the host through the shim executor (test_shim_executor)


def _inner(variant):
    rule = make_rule(variant)
    inner = getattr(rule, "rule", rule)  # a Clipped rule wraps the rule that has the kernel
    import array_api_compat.numpy as xp

    extra, _ = inner.advance_host_state(0, inner.initial_host_state(), xp, [np.ones(3)], [np.ones(3)])
    scalars = inner.host_scalars(0)
    return inner, scalars._replace(**extra) if extra else scalars


def _all_kernels(dtype, target="device"):
    """Every variant's kernels in one source: one array, and the table in place and out of place."""
    parts = []
    for number, variant in enumerate(VARIANTS):
        inner, scalars = _inner(variant)
        slots = len(inner.slot_names())
        kernel = inner.kernel
        sources = {"step": cuda_source(kernel, scalars, slots, dtype, f"step_{number}", target=target),
                   "table": cuda_table_source(kernel, scalars, slots, dtype, f"table_{number}", True, target),
                   "table_out": cuda_table_source(kernel, scalars, slots, dtype, f"table_out_{number}", False, target)}
        parts += [f"namespace {kind}_{number} {{\n{source}\n}}" for kind, source in sources.items()]
    return "\n".join(parts)


def _check_ptx(text, entries):
    assert text.count(".entry") == entries
    assert not re.search(r"\bfma\.", text), "an FMA was generated"
    assert ".ftz" not in text, "a flush-to-zero instruction was generated"
    assert ".approx" not in text, "an approximate instruction was generated"
    arithmetic = re.findall(r"\b(add|sub|mul|div|sqrt)\.(\w+)\.(f32|f64)", text)
    assert arithmetic and all(rounding == "rn" for _, rounding, _ in arithmetic)


@pytest.mark.skipif(not nvrtc.available(), reason="NVRTC is not installed (pip install 'portopt[cuda-compile]')")
@pytest.mark.parametrize("dtype", COMPILED_DTYPES)
def test_every_kernel_compiles_with_nvrtc_under_cupys_flags_without_fma_ftz_or_approx(dtype):
    _check_ptx(nvrtc.compile_ptx(_all_kernels(dtype)), 3 * len(VARIANTS))


@pytest.mark.skipif(not nvrtc.available(), reason="NVRTC is not installed (pip install 'portopt[cuda-compile]')")
def test_nvrtc_would_fuse_and_flush_plain_c_so_the_check_above_can_fail():
    text = nvrtc.compile_ptx('extern "C" __global__ void k(float* p, const float* g) '
                             "{ p[threadIdx.x] = p[threadIdx.x] * 0.5f + g[threadIdx.x]; }")
    assert re.search(r"\bfma\.rn\.ftz\.f32", text)


NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA compiler) is not installed here")
@pytest.mark.parametrize("dtype", COMPILED_DTYPES)
def test_kernels_compile_with_nvcc_too(dtype, tmp_path):
    source = tmp_path / "kernels.cu"
    source.write_text(_all_kernels(dtype))
    ptx = tmp_path / "kernels.ptx"
    # CuPy compiles with -ftz=true; NVRTC and nvcc contract into FMA by default (--fmad=true).
    subprocess.run([NVCC, "-ptx", "-arch=sm_90", "-ftz=true", "-fmad=true", "-o", str(ptx), str(source)],
                   check=True, capture_output=True, timeout=600)
    _check_ptx(ptx.read_text(), 3 * len(VARIANTS))


def test_source_follows_the_traced_kernel():
    rule = portopt.Adam()
    text = cuda_source(rule.kernel, rule.host_scalars(0), 2, "float32")
    assert "sqrt_f32(" in text and "div_f32(" in text and "p[i] = " in text
    graph = trace(rule.kernel, rule.host_scalars(0), 2)
    table = cuda_table_source(rule.kernel, rule.host_scalars(0), 2, "float32")
    assert all(f"scalars[{k}]" in table for k in range(len(graph.scalar_names)))
    with pytest.raises(KeyError):
        cuda_source(rule.kernel, rule.host_scalars(0), 2, "int32")


# --- the generated source run on the CPU ------------------------------------------------------------
@pytest.fixture(scope="module")
def libraries():
    if host_shim.compiler() is None:
        pytest.skip("no C++ compiler here")
    return {dtype: host_shim.build(_all_kernels(dtype, target="host")) for dtype in DTYPES}


def _tree(dtype, seed):
    rng = np.random.default_rng(seed)
    info = np.finfo(dtype)
    leaves = []
    for n in (257, 0, 9):
        x = (rng.standard_normal(n) * 2.0 ** rng.integers(-20, 5, n)).astype(dtype)
        x[: min(n, 6)] = [0.0, -0.0, info.smallest_subnormal, info.tiny, info.max / 4, -1.0][: min(n, 6)]
        leaves.append(x)
    return leaves


def _address(x):
    return x.ctypes.data


_EXTRA: dict = {}


def _table(libraries, dtype, number, inner, scalars, first_scalars):
    """The host table kernel for these flags: from the library of every variant's first-step
    kernels, or built for flags that change later (SGD's first_step, RAdam's rectified)."""
    from portopt.numerics import flags_of

    if flags_of(scalars) == flags_of(first_scalars):
        function = getattr(libraries[dtype], f"table_{number}")
    else:
        key = (dtype, number, flags_of(scalars))
        if key not in _EXTRA:
            source = cuda_table_source(inner.kernel, scalars, len(inner.slot_names()), dtype, "table", True,
                                       "host")
            _EXTRA[key] = host_shim.build(source).table
        function = _EXTRA[key]
    function.restype = None
    return function


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("variant", VARIANTS, ids=[variant_id(v) for v in VARIANTS])
def test_the_generated_source_run_on_the_cpu_gives_numpys_bits(variant, dtype, libraries):
    """The table kernel, in place, stepped 12 times over three leaves (one empty), against
    portopt's reference (update with the fast path off) on the same inputs."""
    number = VARIANTS.index(variant)
    rule = make_rule(variant)
    inner = getattr(rule, "rule", rule)
    params = [np.abs(x) + 0.25 for x in _tree(dtype, 0)]
    reference, state = [p.copy() for p in params], inner.init(params)
    ours, ours_state = [p.copy() for p in params], inner.init(params)
    _, first_scalars = _inner(variant)
    compute = np.float64 if dtype == "float64" else np.float32
    sizes = np.array([p.size for p in params], dtype=np.int64)
    chunk_leaf, chunk_start, chunk_stop = chunks(sizes)
    loops_scalars = None
    with np.errstate(all="ignore"):
        for step in range(12):
            grads = [np.ascontiguousarray(g) for g in _tree(dtype, 100 + step)]
            if getattr(rule, "max_norm", None) is not None:  # Clipped: the same clipped grads for both
                grads = [np.asarray(g) for g in portopt.clip_by_global_norm(grads, rule.max_norm)[0]]
            import array_api_compat.numpy as xp

            extra, new_host = inner.advance_host_state(ours_state.step, dict(ours_state.host), xp, grads, ours)
            scalars = inner.host_scalars(ours_state.step)
            scalars = scalars._replace(**extra) if extra else scalars
            graph = trace(inner.kernel, scalars, len(inner.slot_names()))
            table = _table(libraries, dtype, number, inner, scalars, first_scalars)
            loops_scalars = np.array([getattr(scalars, name) for name in graph.scalar_names], dtype=compute)
            slots = [ours_state.slots[name] for name in inner.slot_names()]
            read = np.array([[_address(x) for x in row] for row in (ours, grads, *slots)], dtype=np.int64)
            table(ctypes.c_void_p(read.ctypes.data), ctypes.c_void_p(read.ctypes.data),
                  ctypes.c_void_p(chunk_leaf.ctypes.data), ctypes.c_void_p(chunk_start.ctypes.data),
                  ctypes.c_void_p(chunk_stop.ctypes.data), ctypes.c_longlong(len(chunk_leaf)),
                  ctypes.c_longlong(len(params)), ctypes.c_void_p(loops_scalars.ctypes.data))
            ours_state.step += 1
            ours_state.host = new_host
            with portopt.fast_path("off"):
                reference, state = inner.update(reference, grads, state)
    for a, b in zip(ours, reference):
        assert same_bits_any_nan(a, b)
    for name in inner.slot_names():
        for a, b in zip(ours_state.slots[name], state.slots[name]):
            assert same_bits_any_nan(a, b), name
