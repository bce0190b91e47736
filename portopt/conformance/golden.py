"""Golden vector files: one JSON file per rule under ``conformance/golden/``.

Format (documented in FORMAT.md): ``{"format": "portopt-golden/1", "generator": ...,
"reference": {...}, "cases": {case_id: {"rule", "variant", "options", "dtype", "shape",
"steps", "seed", "checkpoints": {step: {array_name: sha256}}, "values": {step: {array_name:
[hex, ...]}}}}}``. Written only by ``portopt conformance regenerate``.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from . import generator

__all__ = ["GOLDEN_DIR", "FORMAT", "load_golden", "write_golden", "golden_path"]

GOLDEN_DIR = Path(__file__).with_name("golden")
FORMAT = "portopt-golden/1"


def golden_path(rule: str, directory: Path = GOLDEN_DIR) -> Path:
    return Path(directory) / f"{rule}.json"


def load_golden(rule: str, directory: Path = GOLDEN_DIR) -> dict[str, Any]:
    """The cases of one rule's golden file (empty if the file does not exist)."""
    path = golden_path(rule, directory)
    if not path.exists():
        return {}
    with open(path) as handle:
        document = json.load(handle)
    if document.get("format") != FORMAT:
        raise ValueError(f"{path}: format {document.get('format')!r}, this portopt reads {FORMAT!r}")
    if document.get("generator") != generator.GENERATOR_VERSION:
        raise ValueError(f"{path}: generator {document.get('generator')!r}, expected {generator.GENERATOR_VERSION!r}")
    return document["cases"]


def render(rule: str, cases: dict[str, Any]) -> str:
    """The file's text: stable key order and one line per digest, so diffs are per case and array."""
    import portopt

    document = {
        "format": FORMAT,
        "generator": generator.GENERATOR_VERSION,
        "reference": {
            "backend": "numpy",
            "numpy": np.__version__,
            "portopt": portopt.__version__,
            "machine": platform.machine(),
        },
        "cases": cases,
    }
    return json.dumps(document, indent=1, sort_keys=False) + "\n"


def write_golden(rule: str, cases: dict[str, Any], directory: Path = GOLDEN_DIR) -> Path:
    path = golden_path(rule, directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(rule, cases))
    return path
