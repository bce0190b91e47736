"""Backends as test targets: which can be imported here, and how to move arrays to them.

The tests and the conformance suite run on every target found; a missing one is reported
with the reason, never silently dropped.
"""

from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass
from typing import Any, Callable

import array_api_compat
import numpy as np

from . import adapter_for

__all__ = ["Target", "find_targets", "namespace_target", "TARGET_NAMES", "OPTIONAL_TARGET_NAMES"]

TARGET_NAMES = ("numpy", "torch-cpu", "torch-cuda", "cupy", "array_api_strict", "jax")
# Chosen by name only (--backends dask): lazy, so a 1000-step golden case is slow there.
OPTIONAL_TARGET_NAMES = ("dask",)
_ALL_DTYPES = ("float16", "float32", "float64")


@dataclass(frozen=True)
class Target:
    """A backend (and device) the suite can run on."""

    label: str
    xp: Any  # the array_api_compat namespace
    device: Any
    dtypes: tuple[str, ...]
    _from_numpy: Callable[[np.ndarray], Any]
    # for lazy backends: evaluate (params, slots) after a step so the graph stays short
    settle: Callable[[Any, dict], tuple[Any, dict]] | None = None

    def asarray(self, host: np.ndarray) -> Any:
        """A copy of the host array on this target, same bits (never sharing the host's memory)."""
        return self._from_numpy(np.array(host, copy=True, order="C"))

    def to_numpy(self, x: Any) -> np.ndarray:
        return adapter_for(self.xp).to_numpy(x)

    @functools.cached_property
    def mutable(self) -> bool:
        probe = self.asarray(np.zeros(1, np.float32))
        return adapter_for(self.xp).is_writeable(probe)


def _numpy() -> Target:
    import array_api_compat.numpy as xp

    return Target("numpy", xp, "cpu", _ALL_DTYPES, lambda a: a)


def _torch(device: str) -> Target:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("torch has no CUDA device here")
    import array_api_compat.torch as xp

    return Target(
        f"torch-{device}", xp, torch.device(device), _ALL_DTYPES,
        lambda a: torch.from_numpy(a).to(device),
    )


def _cupy() -> Target:
    import cupy

    if cupy.cuda.runtime.getDeviceCount() < 1:
        raise RuntimeError("cupy finds no CUDA device")
    import array_api_compat.cupy as xp

    return Target("cupy", xp, None, _ALL_DTYPES, cupy.asarray)


def _strict() -> Target:
    import array_api_strict

    xp = array_api_strict
    # The strict namespace has no float16 (it is not in the standard).
    return Target("array_api_strict", xp, None, ("float32", "float64"), xp.asarray)


def _jax() -> Target:
    import jax

    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    return Target("jax", array_api_compat.array_namespace(jnp.zeros(1)), None, _ALL_DTYPES, jnp.asarray)


def _dask() -> Target:
    import dask.array as da

    xp = array_api_compat.array_namespace(da.zeros(1))

    def chunked(array: np.ndarray) -> Any:
        # about three chunks per axis, the last one shorter: chunking must not matter
        return da.from_array(array, chunks=tuple(max(1, -(-n // 3)) for n in array.shape) or ())

    def persist(params: Any, slots: dict) -> tuple[Any, dict]:
        import dask

        return dask.persist(params, slots)

    return Target("dask", xp, None, _ALL_DTYPES, chunked, settle=persist)


_FACTORIES: dict[str, Callable[[], Target]] = {
    "numpy": _numpy,
    "torch-cpu": lambda: _torch("cpu"),
    "torch-cuda": lambda: _torch("cuda"),
    "cupy": _cupy,
    "array_api_strict": _strict,
    "jax": _jax,
    "dask": _dask,
}


def find_targets(names: tuple[str, ...] | None = None) -> tuple[dict[str, Target], dict[str, str]]:
    """The targets that load here, and for each one that does not, why."""
    found, missing = {}, {}
    for name in names or TARGET_NAMES:
        if name not in _FACTORIES:
            raise ValueError(f"unknown backend {name!r}; choose from "
                             f"{', '.join(TARGET_NAMES + OPTIONAL_TARGET_NAMES)}")
        try:
            found[name] = _FACTORIES[name]()
        except Exception as error:  # an import error, no device, a broken install
            missing[name] = f"{type(error).__name__}: {error}"
    return found, missing


def namespace_target(module_name: str) -> Target:
    """A target for any array-API namespace given by module path (``--namespace``)."""
    module = importlib.import_module(module_name)
    probe = module.asarray([0.0])
    xp = array_api_compat.array_namespace(probe)
    dtypes = tuple(name for name in _ALL_DTYPES if hasattr(module, name))
    return Target(module_name, xp, None, dtypes, module.asarray)
