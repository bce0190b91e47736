"""Known exceptions: cases a backend cannot reproduce bitwise, with the reason (known_exceptions.toml)."""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path

from .cases import Case

__all__ = ["known_exception", "known_primitive_exception", "EXCEPTIONS_FILE"]

EXCEPTIONS_FILE = Path(__file__).with_name("known_exceptions.toml")


@functools.cache
def _entries() -> tuple[dict, ...]:
    with open(EXCEPTIONS_FILE, "rb") as handle:
        return tuple(tomllib.load(handle).get("exceptions", []))


def known_exception(target: str, case: Case) -> str | None:
    """The documented reason ``target`` cannot reproduce ``case``, or None."""
    for entry in _entries():
        if entry["target"] != target:
            continue
        if all(entry.get(key) in (None, getattr(case, key)) for key in ("rule", "dtype", "shape", "variant")):
            return f"known exception: {entry['reason']}"
    return None


def known_primitive_exception(target: str, dtype: str) -> str | None:
    """The documented reason ``target``'s primitives in ``dtype`` are not correctly rounded, or None.

    Entries that name no rule, shape or variant are about the backend itself, so they cover
    its primitive tier too.
    """
    for entry in _entries():
        if entry["target"] != target or any(entry.get(key) for key in ("rule", "shape", "variant")):
            continue
        if entry.get("dtype") in (None, dtype):
            return f"known exception: {entry['reason']}"
    return None
