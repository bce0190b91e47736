"""Compile generated CUDA source to PTX with NVRTC, which needs no GPU.

NVRTC comes from the package registry (``nvidia-cuda-nvrtc-cu12``) with its Python binding
(``cuda-bindings``), both in the ``cuda-compile`` extra. The options are CuPy's: it compiles
every kernel with ``-ftz=true``, and NVRTC contracts ``a*b + c`` into an FMA by default
(``--fmad=true``); the generated inline PTX must keep its bits under both.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["available", "compile_ptx", "CUPY_OPTIONS"]

CUPY_OPTIONS = ("-ftz=true", "--fmad=true", "-std=c++17")


@functools.cache
def available() -> bool:
    try:
        from cuda.bindings import nvrtc  # noqa: F401
    except ImportError:
        return False
    return True


def compile_ptx(source: str, architecture: str = "compute_90", options: tuple[str, ...] = CUPY_OPTIONS,
                name: str = "portopt.cu") -> str:
    """The PTX of ``source`` for ``architecture``; raises RuntimeError with NVRTC's log on failure."""
    from cuda.bindings import nvrtc

    error, program = nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], [])
    _check(nvrtc, error, "nvrtcCreateProgram", None)
    try:
        arguments = [f"--gpu-architecture={architecture}".encode(), *(option.encode() for option in options)]
        (error,) = nvrtc.nvrtcCompileProgram(program, len(arguments), arguments)
        _check(nvrtc, error, "nvrtcCompileProgram", program)
        error, size = nvrtc.nvrtcGetPTXSize(program)
        _check(nvrtc, error, "nvrtcGetPTXSize", program)
        buffer = b" " * size
        (error,) = nvrtc.nvrtcGetPTX(program, buffer)
        _check(nvrtc, error, "nvrtcGetPTX", program)
        return buffer.rstrip(b"\0").decode()
    finally:
        nvrtc.nvrtcDestroyProgram(program)


def _check(nvrtc: Any, error: Any, call: str, program: Any) -> None:
    if int(error) == 0:  # NVRTC_SUCCESS
        return
    log = ""
    if program is not None:
        _, size = nvrtc.nvrtcGetProgramLogSize(program)
        buffer = b" " * size
        nvrtc.nvrtcGetProgramLog(program, buffer)
        log = buffer.decode(errors="replace")
    raise RuntimeError(f"{call} failed ({error}){': ' + log if log else ''}")
