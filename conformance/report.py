"""Writing generated tables into README.md between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["replace_block"]


def replace_block(path: str | Path, name: str, text: str) -> None:
    """Replace what stands between the two markers of ``name`` in ``path`` with ``text``."""
    path = Path(path)
    content = path.read_text()
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(content):
        raise ValueError(f"{path} has no {start} ... {end} block")
    path.write_text(pattern.sub(lambda _: f"{start}\n{text}\n{end}", content))
