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
    """``source`` compiled into a shared library, cached by its digest, and loaded.

    The cache is a folder of this user's alone (created with mode 0700; one that another user
    owns or others can write to is refused, since a library put there would be loaded); each
    build writes temporary files of its own and renames the library into place, so processes
    and threads building the same source at once do not meet."""
    cxx = compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX, or install g++)")
    digest = hashlib.sha256((source + " ".join(FLAGS) + cxx).encode()).hexdigest()[:24]
    folder = _cache_folder()
    library = folder / f"shim_{digest}.so"
    if not library.exists():
        handle, source_name = tempfile.mkstemp(prefix=f"shim_{digest}.", suffix=".cpp", dir=folder)
        with os.fdopen(handle, "w") as file:
            file.write(source)
        partial = Path(source_name).with_suffix(".so")
        try:
            subprocess.run([cxx, *FLAGS, "-o", str(partial), source_name], check=True, capture_output=True,
                           timeout=300)
            os.replace(partial, library)
        finally:
            Path(source_name).unlink(missing_ok=True)
            partial.unlink(missing_ok=True)
    return ctypes.CDLL(str(library))


def _cache_folder() -> Path:
    uid = os.getuid() if hasattr(os, "getuid") else None
    folder = Path(tempfile.gettempdir()) / f"portopt-host-shim-{uid if uid is not None else 'user'}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if uid is not None:
        status = folder.stat()
        if status.st_uid != uid or status.st_mode & 0o022:
            raise RuntimeError(f"{folder} belongs to another user or others can write to it; "
                               "remove it (the shim's compiled kernels are cached there)")
    return folder
