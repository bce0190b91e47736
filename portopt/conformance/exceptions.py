"""Known exceptions: cases a backend cannot reproduce bitwise, with the reason (known_exceptions.toml)."""

from __future__ import annotations

import functools
import tomllib
from pathlib import Path

from .cases import Case

__all__ = ["known_exception", "known_exception_for", "known_primitive_exception", "EXCEPTIONS_FILE"]

EXCEPTIONS_FILE = Path(__file__).with_name("known_exceptions.toml")


@functools.cache
def _entries() -> tuple[dict, ...]:
    with open(EXCEPTIONS_FILE, "rb") as handle:
        return tuple(tomllib.load(handle).get("exceptions", []))


def known_exception(target: str, case: Case) -> str | None:
    """The documented reason ``target`` cannot reproduce ``case``, or None."""
    return known_exception_for(target, case.rule, case.dtype, case.shape, case.variant)


def known_exception_for(target: str, rule: str, dtype: str, shape: str | None = None,
                        variant: str | None = None) -> str | None:
    """The documented reason ``target`` cannot reproduce ``rule`` in ``dtype`` (on ``shape``, in
    ``variant``; None: a run that is no case of the matrix, which only entries without that
    filter cover), or None."""
    found = {"rule": rule, "dtype": dtype, "shape": shape, "variant": variant}
    for entry in _entries():
        if entry["target"] != target:
            continue
        if all(entry.get(key) in (None, found[key]) for key in found):
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
