"""Run the generated CUDA source on the CPU: the same statements, compiled as C++.

``cuda_source(..., target="host")`` and ``cuda_table_source(..., target="host")`` emit the
kernel with each inline-PTX helper replaced by the one IEEE operation it stands for, and the
grid loops by plain loops. Compiled by the system's C++ compiler with contraction off
(``-ffp-contract=off``, no fast math), the source must give NumPy's reference bits: that
checks what the GPU would run (statement order, slots, table indexing, float16 conversions)
without a GPU. The PTX helpers themselves are checked by reading the PTX (NVRTC).
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

__all__ = ["compiler", "build"]

FLAGS = ("-O2", "-ffp-contract=off", "-fno-fast-math", "-fno-math-errno", "-std=c++17", "-shared", "-fPIC")


@functools.cache
def compiler() -> str | None:
    """The C++ compiler used (``CXX``, else g++ or clang++), or None if there is none."""
    for candidate in (os.environ.get("CXX"), "g++", "clang++"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def build(source: str) -> ctypes.CDLL:
    """``source`` compiled into a shared library, cached by its digest, and loaded."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    digest = hashlib.sha256((source + " ".join(FLAGS) + cxx).encode()).hexdigest()[:24]
    folder = Path(tempfile.gettempdir()) / "portopt-host-shim"
    folder.mkdir(exist_ok=True)
    library = folder / f"shim_{digest}.so"
    if not library.exists():
        source_path = folder / f"shim_{digest}.{os.getpid()}.cpp"
        source_path.write_text(source)
        partial = library.with_suffix(f".{os.getpid()}.so")
        subprocess.run([cxx, *FLAGS, "-o", str(partial), str(source_path)], check=True, capture_output=True,
                       timeout=300)
        os.replace(partial, library)
        source_path.unlink(missing_ok=True)
    return ctypes.CDLL(str(library))
