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
import math
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from .trees import TreeDef

__all__ = ["STATE_FORMAT", "PARTITION_FORMAT", "CheckpointError", "save", "load", "tree_to_json", "tree_from_json"]

STATE_FORMAT = "portopt-state/1"
PARTITION_FORMAT = "portopt-partition/1"  # a partition's state dict: its parts' state dicts
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


def json_hyperparameters(hyperparameters: dict) -> dict:
    """Hyperparameters as JSON; a schedule (a callable) is recorded by name only."""
    plain: dict[str, Any] = {}
    for name, value in hyperparameters.items():
        if callable(value):
            plain[name] = {"schedule": getattr(value, "__qualname__", repr(value))}
        elif isinstance(value, dict):  # already in this form (a state dict read from a file)
            plain[name] = value
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
    arrays: dict[str, np.ndarray] = {}
    manifest = _manifest(state_dict, "", arrays)
    text = json.dumps(manifest, sort_keys=True).encode()
    arrays[_MANIFEST] = np.frombuffer(text, dtype=np.uint8)
    arrays[_MANIFEST_DIGEST] = np.frombuffer(hashlib.sha256(text).hexdigest().encode(), dtype=np.uint8)
    _remove_stale_temporaries(path)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                             dir=path.parent or ".")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            np.savez(handle, **arrays)  # type: ignore[arg-type]  # numpy's stub types allow_pickle first
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _manifest(state_dict: dict, prefix: str, arrays: dict[str, np.ndarray]) -> dict:
    """The manifest of ``state_dict`` (a rule's, or a partition's with its parts'), its arrays
    added to ``arrays`` under keys ``prefix + slot/index``."""
    if state_dict.get("format") == PARTITION_FORMAT:
        return {"format": PARTITION_FORMAT, "rule": state_dict["rule"], "step": state_dict["step"],
                "parts": {name: _manifest(part, f"{prefix}{name}/", arrays)
                          for name, part in state_dict["parts"].items()}}
    entries = []
    for name, leaves in state_dict["slots"].items():
        for index, array in enumerate(leaves):
            key = f"{prefix}{name}/{index}"
            array = np.asarray(array)
            arrays[key] = array
            entries.append({"key": key, "dtype": array.dtype.str, "shape": list(array.shape), "sha256": _digest(array)})
    return {
        "format": STATE_FORMAT,
        "rule": state_dict["rule"],
        "hyperparameters": json_hyperparameters(state_dict["hyperparameters"]),
        "step": state_dict["step"],
        "skipped": state_dict.get("skipped", 0),
        "host": {name: float(value).hex() for name, value in state_dict.get("host", {}).items()},
        "tree": state_dict["tree"],
        "slot_names": list(state_dict["slots"]),
        "arrays": entries,
    }


def _remove_stale_temporaries(path: Path) -> None:
    """Temporary files of earlier saves to ``path`` whose process is gone (killed mid-save)."""
    for candidate in (path.parent or Path(".")).glob(f".{path.name}.*.tmp"):
        parts = candidate.name[len(path.name) + 2:].split(".")
        if not parts or not parts[0].isdigit():
            continue
        pid = int(parts[0])
        if pid == os.getpid() or _alive(pid):
            continue
        candidate.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (another user's), or cannot tell: keep its file
    return True


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
    """Read and verify a checkpoint written by :func:`save`; returns its state dict.

    Anything else, damaged or crafted, raises :class:`CheckpointError` (and only that): the
    archive is read with :mod:`zipfile` member by member, every member must be stored
    uncompressed (as :func:`save` writes them), so no member can expand beyond the file's
    own size, every manifest field is checked for its type and range, and each array's
    ``.npy`` header must match the manifest before its bytes are read.
    """
    path = Path(path)
    try:
        return _load(path)
    except CheckpointError:
        raise
    except (Exception, RecursionError) as error:  # a damaged archive can fail anywhere in zipfile or numpy
        raise CheckpointError(f"{path}: not a readable portopt checkpoint ({type(error).__name__}: {error})"[:500]) \
            from error


_MAX_MANIFEST_BYTES = 64 << 20
_DTYPES = {"<f2", "<f4", "<f8", "<u2", "<i2", "|u1"}  # float16/32/64; bfloat16 bits; master_low bits; manifest
_HEX = set("0123456789abcdef")


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 0x1:
        raise CheckpointError(f"member {info.filename!r} is compressed or encrypted; portopt writes stored members")
    if info.file_size > limit:
        raise CheckpointError(f"member {info.filename!r} declares {info.file_size} bytes, more than {limit}")
    with archive.open(info) as handle:
        data = handle.read(limit + 1)
    if len(data) > limit or len(data) != info.file_size:
        raise CheckpointError(f"member {info.filename!r} holds {len(data)} bytes, its header says {info.file_size}")
    return data


def _array_from_npy(data: bytes, name: str, dtype: str, shape: list[int]) -> np.ndarray:
    """The array of one ``.npy`` member, its header checked against the manifest first."""
    import io

    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    if version == (1, 0):
        header = np.lib.format.read_array_header_1_0(stream, max_header_size=10_000)
    elif version == (2, 0):
        header = np.lib.format.read_array_header_2_0(stream, max_header_size=10_000)
    else:
        raise CheckpointError(f"array {name} has .npy version {version}")
    found_shape, fortran, found_dtype = header
    if found_dtype.str != dtype or list(found_shape) != shape or fortran:
        raise CheckpointError(f"array {name} is {found_dtype.str}{list(found_shape)}"
                              f"{' (Fortran order)' if fortran else ''}, the manifest says {dtype}{shape}")
    count = math.prod(shape)
    body = data[stream.tell():]
    if len(body) != count * found_dtype.itemsize:
        raise CheckpointError(f"array {name} holds {len(body)} bytes, {dtype}{shape} needs {count * found_dtype.itemsize}")
    return np.frombuffer(body, dtype=found_dtype).reshape(shape).copy()


def _load(path: Path) -> dict:
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a readable portopt checkpoint (not a zip archive: a .npy, or damaged?)")
    size = path.stat().st_size
    with zipfile.ZipFile(path) as archive:
        members = {info.filename: info for info in archive.infolist()}
        for required in (f"{_MANIFEST}.npy", f"{_MANIFEST_DIGEST}.npy"):
            if required not in members:
                raise CheckpointError(f"{path}: not a readable portopt checkpoint (it has no manifest)")
        text = _manifest_bytes(archive, members[f"{_MANIFEST}.npy"])
        digest = _manifest_bytes(archive, members[f"{_MANIFEST_DIGEST}.npy"])
        if hashlib.sha256(text).hexdigest().encode() != digest:
            raise CheckpointError(f"{path}: manifest does not match its SHA-256 (corrupted or tampered)")
        try:
            manifest = json.loads(text.decode())
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as error:
            raise CheckpointError(f"{path}: manifest is corrupted ({type(error).__name__})") from error
        manifest = _checked_manifest(path, manifest)
        entries = _entries(manifest)
        expected = {f"{entry['key']}.npy" for entry in entries} | {f"{_MANIFEST}.npy", f"{_MANIFEST_DIGEST}.npy"}
        if set(members) != expected or len(entries) != len(expected) - 2:
            raise CheckpointError(f"{path}: members {sorted(set(members) ^ expected)[:5]} missing or unexpected")
        contents = {}
        for entry in entries:
            data = _read_member(archive, members[f"{entry['key']}.npy"], size)
            array = _array_from_npy(data, entry["key"], entry["dtype"], entry["shape"])
            if _digest(array) != entry["sha256"]:
                raise CheckpointError(f"{path}: array {entry['key']} does not match its SHA-256 (corrupted or tampered)")
            contents[entry["key"]] = array
    return _state_dict(path, manifest, "", contents)


def _entries(manifest: dict) -> list[dict]:
    """The array entries of a manifest and of all its parts."""
    if manifest["format"] == PARTITION_FORMAT:
        return [entry for part in manifest["parts"].values() for entry in _entries(part)]
    return manifest["arrays"]


def _state_dict(path: Path, manifest: dict, prefix: str, contents: dict[str, np.ndarray]) -> dict:
    """The state dict of a checked manifest, its arrays taken from ``contents``."""
    if manifest["format"] == PARTITION_FORMAT:
        return {"format": PARTITION_FORMAT, "rule": manifest["rule"], "step": manifest["step"],
                "parts": {name: _state_dict(path, part, f"{prefix}{name}/", contents)
                          for name, part in manifest["parts"].items()}}
    leaves = tree_from_json(manifest["tree"]).num_leaves if manifest["tree"] is not None else 0
    layout = {f"{prefix}{name}/{index}" for name in manifest["slot_names"] for index in range(leaves)}
    if layout != {entry["key"] for entry in manifest["arrays"]}:
        raise CheckpointError(f"{path}: arrays do not match the manifest's tree and slots")
    slots = {name: [contents[f"{prefix}{name}/{index}"] for index in range(leaves)] for name in manifest["slot_names"]}
    return {
        "format": STATE_FORMAT,
        "rule": manifest["rule"],
        "hyperparameters": manifest["hyperparameters"],
        "step": manifest["step"],
        "skipped": manifest["skipped"],
        "host": {name: float.fromhex(value) for name, value in manifest["host"].items()},
        "tree": manifest["tree"],
        "slots": slots,
    }


def _manifest_bytes(archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> bytes:
    data = _read_member(archive, info, _MAX_MANIFEST_BYTES)
    import io

    stream = io.BytesIO(data)
    version = np.lib.format.read_magic(stream)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = reader(stream, max_header_size=10_000)
    if dtype.str != "|u1" or len(shape) != 1 or fortran:
        raise CheckpointError(f"member {info.filename!r} is not a byte string")
    body = data[stream.tell():]
    if len(body) != shape[0]:
        raise CheckpointError(f"member {info.filename!r} is truncated")
    return body


def _checked_manifest(path: Path, manifest: Any, depth: int = 0) -> dict:
    """Every field of the manifest, of the type and in the range :func:`save` writes."""
    def fail(what: str) -> None:
        raise CheckpointError(f"{path}: manifest {what}")

    if not isinstance(manifest, dict):
        fail("is not a JSON object")
    if manifest.get("format") == PARTITION_FORMAT and depth < 32:
        step, parts = manifest.get("step"), manifest.get("parts")
        if not isinstance(manifest.get("rule"), str):
            fail("field 'rule' must be a str")
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            fail(f"field 'step' must be an int >= 0, got {step!r}"[:200])
        if not isinstance(parts, dict) or not all(isinstance(n, str) and n and "/" not in n for n in parts):
            fail("field 'parts' must map part names to manifests")
        return {**manifest, "parts": {name: _checked_manifest(path, part, depth + 1) for name, part in parts.items()}}
    if manifest.get("format") != STATE_FORMAT:
        fail(f"has format {manifest.get('format')!r}, this portopt reads {STATE_FORMAT!r}")
    for key, kind in (("rule", str), ("hyperparameters", dict), ("host", dict), ("slot_names", list),
                      ("arrays", list)):
        if not isinstance(manifest.get(key), kind):
            fail(f"field {key!r} must be a {kind.__name__}")
    for key in ("step", "skipped"):
        value = manifest.get(key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            fail(f"field {key!r} must be an int >= 0, got {value!r}"[:200])
    for name, value in manifest["host"].items():
        if not isinstance(value, str):
            fail(f"host value {name!r} must be a float in hex")
        try:
            float.fromhex(value)
        except (ValueError, OverflowError):
            fail(f"host value {name!r} is not a float in hex")
    names = manifest["slot_names"]
    if not all(isinstance(name, str) and name and "/" not in name for name in names) or len(set(names)) != len(names):
        fail("has malformed slot names")
    if manifest.get("tree") is not None:
        _check_tree_json(path, manifest["tree"], 0)
    for entry in manifest["arrays"]:
        if (not isinstance(entry, dict) or not isinstance(entry.get("key"), str) or entry.get("dtype") not in _DTYPES
                or not isinstance(entry.get("shape"), list) or len(entry["shape"]) > 32
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in entry["shape"])
                or not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64
                or not set(entry["sha256"]) <= _HEX):
            fail(f"has a malformed array entry {str(entry)[:120]}")
    return manifest


def _check_tree_json(path: Path, data: Any, depth: int) -> None:
    if depth > 200:
        raise CheckpointError(f"{path}: manifest tree is nested deeper than 200 levels")
    if data == "*":
        return
    if (not isinstance(data, dict) or data.get("kind") not in ("dict", "list", "tuple")
            or not isinstance(data.get("children"), list)):
        raise CheckpointError(f"{path}: malformed tree in checkpoint: {str(data)[:120]}")
    if data["kind"] == "dict":
        keys = data.get("keys")
        if (not isinstance(keys, list) or len(keys) != len(data["children"])
                or not all(isinstance(k, list) and len(k) == 2 and (k[0], type(k[1])) in (("s", str), ("i", int))
                           for k in keys)):
            raise CheckpointError(f"{path}: malformed dict keys in the manifest's tree")
    for child in data["children"]:
        _check_tree_json(path, child, depth + 1)
