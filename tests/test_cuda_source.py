"""The generated CUDA kernels compile (nvcc, no GPU needed) with CuPy's flags and contain no FMA
and no flush-to-zero instruction. Running them needs a GPU (docs/gpu.md)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from helpers import VARIANTS, make_rule
from portopt.kernels.cuda import cuda_source

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc (the CUDA compiler) is not installed here")


def _sources(dtype):
    parts = []
    for number, variant in enumerate(VARIANTS):
        rule = make_rule(variant)
        kernel = type(getattr(rule, "rule", rule)).kernel
        source = cuda_source(kernel, rule.host_scalars(0), len(rule.slot_names()), dtype, f"step_{number}")
        parts.append(f"namespace variant_{number} {{\n{source}\n}}")
    return "\n".join(parts)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_kernels_compile_with_cupys_flags_and_have_no_fma_or_ftz(dtype, tmp_path):
    source = tmp_path / "kernels.cu"
    source.write_text(_sources(dtype))
    ptx = tmp_path / "kernels.ptx"
    # CuPy compiles with -ftz=true; NVRTC and nvcc contract into FMA by default (--fmad=true).
    subprocess.run([NVCC, "-ptx", "-arch=sm_90", "-ftz=true", "-fmad=true", "-o", str(ptx), str(source)],
                   check=True, capture_output=True, timeout=600)
    text = ptx.read_text()
    assert text.count(".entry") == len(VARIANTS)
    assert not re.search(r"\bfma\.", text), "an FMA was generated"
    assert ".ftz" not in text, "a flush-to-zero instruction was generated"
    arithmetic = re.findall(r"\b(add|sub|mul|div|sqrt)\.(\w+)\.(f32|f64)", text)
    assert arithmetic and all(rounding == "rn" for _, rounding, _ in arithmetic)


def test_source_follows_the_traced_kernel():
    import portopt

    rule = portopt.Adam()
    text = cuda_source(type(rule).kernel, rule.host_scalars(0), 2, "float32")
    assert "sqrt_f32(" in text and "div_f32(" in text and "p[i] = " in text
    with pytest.raises(KeyError):
        cuda_source(type(rule).kernel, rule.host_scalars(0), 2, "int32")
