"""Writing generated tables into README.md between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["replace_block", "machine_description"]


def machine_description() -> str:
    """CPU model and core count, for the figures' captions."""
    import os
    import platform

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores"


def replace_block(path: str | Path, name: str, text: str) -> None:
    """Replace what stands between the two markers of ``name`` in ``path`` with ``text``."""
    path = Path(path)
    content = path.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(content):
        raise ValueError(f"{path} has no {start} ... {end} block")
    path.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", content))
