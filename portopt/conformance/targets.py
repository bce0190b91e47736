"""Backends as test targets: which can be imported here, and how to move arrays to them.

The tests and the conformance suite run on every target found; a missing one is reported
with the reason, never silently dropped.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy as np

from portopt.backends import adapter_for
from portopt.numerics import dtype_name, host_dtype

__all__ = ["Target", "TargetError", "find_targets", "namespace_target", "TARGET_NAMES", "OPTIONAL_TARGET_NAMES",
           "CHECKER_NAMES", "MAIN_JOB_NAMES"]

TARGET_NAMES = ("numpy", "torch-cpu", "torch-cuda", "cupy", "array_api_strict", "jax")
# Chosen by name only (--backends dask): lazy, so a 1000-step golden case is slow there.
# jax-jit: JAX with every update run as jax.jit(rule.update) (a compilation per case); the plain
# jax target is eager rule.update on JAX arrays (portopt.jax.eager_update: a compiled kernel per case).
OPTIONAL_TARGET_NAMES = ("dask", "jax-jit")
# The backends `portopt conformance` runs without --backends: every one of TARGET_NAMES but the
# standard's checker. array-api-strict computes nothing of its own (its arithmetic is NumPy's
# ufuncs); it proves the rules use nothing outside the standard, which is a property of
# portopt's code, not of a user's install, and its checks cost ~15 us an operation: its 628
# cases take ~150 s on 2 cores, more than the whole main job may. It runs when named, and in
# the tests (a sample in `pytest`, every case in `pytest -m long`, which CI runs).
CHECKER_NAMES = ("array_api_strict",)
MAIN_JOB_NAMES = tuple(name for name in TARGET_NAMES if name not in CHECKER_NAMES)
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
    # how a pure step runs here: wrap_update(rule.update) (jax-jit: jax.jit), None: rule.update
    wrap_update: Callable[[Callable], Callable] | None = None

    def asarray(self, host: np.ndarray) -> Any:
        """A copy of the host array on this target, same bits (never sharing the host's memory)."""
        return self._from_numpy(np.array(host, copy=True, order="C"))

    def to_numpy(self, x: Any) -> np.ndarray:
        host = adapter_for(self.xp).to_numpy(x)
        if host.dtype == np.uint16 and dtype_name(self.xp, x.dtype) == "bfloat16":
            host = host.view(host_dtype("bfloat16"))  # a backend's bfloat16 bits as ml_dtypes' bfloat16
        return host

    def updater(self, rule: Any) -> Callable[[Any, Any, Any], tuple[Any, Any]]:
        """The function that takes a pure step of ``rule`` on this target."""
        return rule.update if self.wrap_update is None else self.wrap_update(rule.update)

    @functools.cached_property
    def mutable(self) -> bool:
        probe = self.asarray(np.zeros(1, np.float32))
        return adapter_for(self.xp).is_writeable(probe)


def _numpy() -> Target:
    import array_api_compat.numpy as xp

    return Target("numpy", xp, "cpu", _ALL_DTYPES + _bfloat16(), lambda a: a)


def _bfloat16() -> tuple[str, ...]:
    """("bfloat16",) where ml_dtypes gives NumPy a bfloat16 (the reference's), else ()."""
    try:
        import ml_dtypes  # noqa: F401
    except ImportError:
        return ()
    return ("bfloat16",)


def _torch(device: str) -> Target:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("torch has no CUDA device here")
    import array_api_compat.torch as xp

    adapter = adapter_for(xp)

    native = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
    on_cpu = device == "cpu"

    def from_numpy(a: np.ndarray) -> Any:  # ``a``: a C-order copy (Target.asarray), taken over
        if a.dtype not in native:  # ml_dtypes' bfloat16: torch takes its bits
            if on_cpu:
                return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
            return adapter.bfloat16_from_bits(a.view(np.uint16), torch.device(device))
        return torch.from_numpy(a) if on_cpu else torch.from_numpy(a).to(device)

    return Target(f"torch-{device}", xp, torch.device(device), _ALL_DTYPES + _bfloat16(), from_numpy)


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

    return Target("jax", array_api_compat.array_namespace(jnp.zeros(1)), None, _ALL_DTYPES + _bfloat16(), jnp.asarray)


def _jax_jit() -> Target:
    """JAX stepping with ``jax.jit(rule.update)``. Arrays are committed to the CPU device, as the
    jitted step's outputs are, so a case compiles once; outputs keep the caller's dict order."""
    import jax
    import jax.numpy as jnp

    plain = _jax()
    device = jax.devices("cpu")[0]
    return Target("jax-jit", plain.xp, None, plain.dtypes, lambda a: jax.device_put(jnp.asarray(a), device),
                  wrap_update=_jitted_in_caller_order)


def _jitted_in_caller_order(update: Callable) -> Callable:
    """``jax.jit(update)``, its params and slots given back with the dict keys in the caller's
    order (JAX returns dicts with sorted keys; the suite names arrays by position)."""
    import jax

    from portopt.state import State

    jitted = jax.jit(update)

    def step(params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
        new_params, new_state = jitted(params, grads, state)
        slots = {name: _in_order_of(params, tree) for name, tree in new_state.slots.items()}
        return _in_order_of(params, new_params), State(rule=new_state.rule, step=new_state.step, slots=slots,
                                                        skipped=new_state.skipped, host=new_state.host)

    return step


def _in_order_of(like: Any, tree: Any) -> Any:
    """``tree`` with every dict's keys in the order of ``like``'s (same structure otherwise)."""
    if isinstance(like, dict):
        return {key: _in_order_of(like[key], tree[key]) for key in like}
    if isinstance(like, (list, tuple)) and not hasattr(like, "_fields"):
        return type(like)(_in_order_of(a, b) for a, b in zip(like, tree))
    return tree


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
    "jax-jit": _jax_jit,
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


class TargetError(ValueError):
    """A namespace the conformance suite cannot test, with what is missing."""


# What the rules and the suite call on a namespace, besides the operators of its arrays.
NAMESPACE_NEEDS = ("asarray", "astype", "sqrt", "where", "maximum", "minimum", "signbit", "abs", "isfinite", "all",
                   "full", "zeros", "reshape", "concat", "float32", "float64", "isdtype")


def namespace_target(module_name: str) -> Target:
    """A target for the array-API namespace ``module_name`` (``--namespace``): its own
    functions, and arrays that report it as their namespace, so that what is tested is that
    namespace. Anything else is refused with a :class:`TargetError` saying why."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise TargetError(f"--namespace {module_name}: cannot import it ({error})") from error
    missing = [name for name in NAMESPACE_NEEDS if not hasattr(module, name)]
    if missing:
        raise TargetError(f"--namespace {module_name}: it lacks {', '.join(missing)}, which portopt's rules or the "
                          "suite call; it is not an array API namespace portopt can test")
    try:
        probe = module.asarray([0.0, 1.0], dtype=module.float32)
        xp = array_api_compat.array_namespace(probe)
    except Exception as error:  # noqa: BLE001 - the library's own error, reported
        raise TargetError(f"--namespace {module_name}: its arrays are not array API arrays portopt recognises "
                          f"({type(error).__name__}: {error})") from error
    if xp is not module and not _compat_wrapper_of(xp, module):
        raise TargetError(
            f"--namespace {module_name}: {module_name}.asarray returns {type(probe).__module__}."
            f"{type(probe).__name__} arrays, whose namespace is {getattr(xp, '__name__', xp)}, not {module_name}. "
            f"portopt computes with the namespace its arrays report (__array_namespace__), so this run would test "
            f"{getattr(xp, '__name__', xp)}, not {module_name}: give {module_name}'s arrays an __array_namespace__ "
            "that returns it (or run that backend by name)")
    try:
        adapter_for(xp).to_numpy(probe)
    except TypeError as error:
        raise TargetError(f"--namespace {module_name}: {error}") from error
    dtypes = tuple(name for name in _ALL_DTYPES if hasattr(module, name))
    return Target(module_name, xp, None, dtypes, module.asarray)


def _compat_wrapper_of(xp: Any, module: Any) -> bool:
    """Whether ``xp`` is array-api-compat's namespace for ``module`` (numpy, torch, cupy, dask)."""
    name = getattr(module, "__name__", "")
    return getattr(xp, "__name__", "") in (f"array_api_compat.{name}", f"array_api_compat.{name}.array")
