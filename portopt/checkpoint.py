"""Checkpoints: a backend-neutral state dict, and files that are written atomically and verified.

A state dict is plain data: ``{"format", "rule", "hyperparameters", "step", "skipped",
"tree", "slots": {name: [numpy array per leaf]}}``. :func:`save` writes it as one ``.npz``
whose entry ``manifest`` (JSON as bytes) holds the format version, rule, hyperparameters,
step, tree and each array's dtype, shape and SHA-256, and ``manifest_sha256`` the
manifest's own digest; :func:`load` checks all of it and never unpickles anything. The
digests detect corruption and edits; they are not a signature against a forger.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .trees import TreeDef

__all__ = ["STATE_FORMAT", "CheckpointError", "save", "load", "tree_to_json", "tree_from_json"]

STATE_FORMAT = "portopt-state/1"
_MANIFEST = "manifest"
_MANIFEST_DIGEST = "manifest_sha256"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded: truncated, corrupted, tampered with, or not ours."""


def tree_to_json(treedef: TreeDef) -> Any:
    """A tree structure as JSON data; dict keys keep their type (str or int)."""
    if treedef.kind == "leaf":
        return "*"
    keys = None
    if treedef.kind == "dict":
        keys = []
        for key in treedef.keys:
            if isinstance(key, bool) or not isinstance(key, (str, int)):
                raise TypeError(f"checkpoints support dict keys of type str or int, got {key!r}")
            keys.append(["s" if isinstance(key, str) else "i", key])
    return {"kind": treedef.kind, "keys": keys, "children": [tree_to_json(c) for c in treedef.children]}


def tree_from_json(data: Any) -> TreeDef:
    if data == "*":
        return TreeDef("leaf")
    if not isinstance(data, dict) or data.get("kind") not in ("dict", "list", "tuple"):
        raise CheckpointError(f"malformed tree in checkpoint: {data!r}"[:200])
    children = tuple(tree_from_json(c) for c in data["children"])
    if data["kind"] == "dict":
        keys = tuple(str(v) if t == "s" else int(v) for t, v in data["keys"])
    else:
        keys = tuple(range(len(children)))
    return TreeDef(data["kind"], keys, children)


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<")).tobytes()).hexdigest()


def _json_hyperparameters(hyperparameters: dict) -> dict:
    """Hyperparameters as JSON; a schedule (a callable) is recorded by name only."""
    plain = {}
    for name, value in hyperparameters.items():
        if callable(value):
            plain[name] = {"schedule": getattr(value, "__qualname__", repr(value))}
        elif isinstance(value, tuple):
            plain[name] = list(value)
        else:
            plain[name] = value
    return plain


def save(path: str | os.PathLike, state_dict: dict) -> None:
    """Write ``state_dict`` to ``path`` atomically: temporary file, fsync, rename.

    A crash at any point leaves the previous file at ``path`` as it was.
    """
    path = Path(path)
    arrays, entries = {}, []
    for name, leaves in state_dict["slots"].items():
        for index, array in enumerate(leaves):
            key = f"{name}/{index}"
            array = np.asarray(array)
            arrays[key] = array
            entries.append({"key": key, "dtype": array.dtype.str, "shape": list(array.shape), "sha256": _digest(array)})
    manifest = {
        "format": STATE_FORMAT,
        "rule": state_dict["rule"],
        "hyperparameters": _json_hyperparameters(state_dict["hyperparameters"]),
        "step": state_dict["step"],
        "skipped": state_dict.get("skipped", 0),
        "host": {name: float(value).hex() for name, value in state_dict.get("host", {}).items()},
        "tree": state_dict["tree"],
        "slot_names": list(state_dict["slots"]),
        "arrays": entries,
    }
    text = json.dumps(manifest, sort_keys=True).encode()
    arrays[_MANIFEST] = np.frombuffer(text, dtype=np.uint8)
    arrays[_MANIFEST_DIGEST] = np.frombuffer(hashlib.sha256(text).hexdigest().encode(), dtype=np.uint8)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    try:
        descriptor = os.open(directory or ".", os.O_RDONLY)
    except OSError:
        return  # not every platform can open a directory
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)


def load(path: str | os.PathLike) -> dict:
    """Read and verify a checkpoint written by :func:`save`; returns its state dict."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            contents = {key: archive[key] for key in archive.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as error:
        raise CheckpointError(f"{path}: not a readable portopt checkpoint ({type(error).__name__}: {error})") from error
    if _MANIFEST not in contents or _MANIFEST_DIGEST not in contents:
        raise CheckpointError(f"{path}: no manifest; not a portopt checkpoint")
    text = contents.pop(_MANIFEST).tobytes()
    if hashlib.sha256(text).hexdigest().encode() != contents.pop(_MANIFEST_DIGEST).tobytes():
        raise CheckpointError(f"{path}: manifest does not match its SHA-256 (corrupted or tampered)")
    try:
        manifest = json.loads(text.decode())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path}: manifest is corrupted ({error})") from error
    if manifest.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path}: format {manifest.get('format')!r}, this portopt reads {STATE_FORMAT!r}")
    expected_keys = {entry["key"] for entry in manifest["arrays"]}
    if expected_keys != set(contents):
        raise CheckpointError(f"{path}: arrays {sorted(set(contents) ^ expected_keys)} missing or unexpected")
    for entry in manifest["arrays"]:
        array = contents[entry["key"]]
        if array.dtype.str != entry["dtype"] or list(array.shape) != entry["shape"]:
            raise CheckpointError(f"{path}: array {entry['key']} is {array.dtype.str}{list(array.shape)}, "
                                  f"manifest says {entry['dtype']}{entry['shape']}")
        if _digest(array) != entry["sha256"]:
            raise CheckpointError(f"{path}: array {entry['key']} does not match its SHA-256 (corrupted or tampered)")
    leaves = tree_from_json(manifest["tree"]).num_leaves if manifest["tree"] is not None else 0
    layout = {f"{name}/{index}" for name in manifest["slot_names"] for index in range(leaves)}
    if layout != expected_keys:
        raise CheckpointError(f"{path}: arrays do not match the manifest's tree and slots")
    slots = {
        name: [contents[f"{name}/{index}"] for index in range(leaves)] for name in manifest["slot_names"]
    }
    return {
        "format": STATE_FORMAT,
        "rule": manifest["rule"],
        "hyperparameters": manifest["hyperparameters"],
        "step": manifest["step"],
        "skipped": manifest["skipped"],
        "host": {name: float.fromhex(value) for name, value in manifest.get("host", {}).items()},
        "tree": manifest["tree"],
        "slots": slots,
    }
