"""Input checks run before a step writes anything: trees, backends, devices, shapes, dtypes."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import array_api_compat

from .numerics import compute_dtype, is_real_floating
from .state import State
from .trees import TreeDef, flatten, leaf_paths

__all__ = ["Leaves", "check_params", "check_grads", "check_state"]


class Leaves:
    """Flattened parameters with their namespace, device and readable leaf paths."""

    def __init__(self, leaves: list, treedef: TreeDef, xp: Any, device: Any) -> None:
        self.leaves = leaves
        self.treedef = treedef
        self.xp = xp
        self.device = device
        self._paths: list[str] | None = None

    @property
    def paths(self) -> list[str]:
        """Each leaf's path, e.g. ``['w']`` (made when first read: most steps raise no error)."""
        if self._paths is None:
            self._paths = leaf_paths(self.treedef)
        return self._paths

    @paths.setter
    def paths(self, paths: list[str]) -> None:
        self._paths = paths


def _where(argument: str, path: str) -> str:
    return f"{argument}{path}"


_NAMESPACE_BY_TYPE: dict[type, Any] = {}


def _namespace(argument: str, path: str, x: Any) -> Any:
    """The array-API namespace of ``x`` (looked up once per array type: this runs per leaf per step)."""
    xp = _NAMESPACE_BY_TYPE.get(type(x))
    if xp is None:
        if not array_api_compat.is_array_api_obj(x):
            raise TypeError(f"{_where(argument, path)} must be an array, got {type(x).__name__}")
        xp = array_api_compat.array_namespace(x)
        _NAMESPACE_BY_TYPE[type(x)] = xp
    return xp


def check_params(params: Any) -> Leaves:
    """Flatten ``params``; every leaf a real floating array of one backend and device."""
    leaves, treedef = flatten(params)
    checked = Leaves(leaves, treedef, None, None)
    xp = device = None
    for index, p in enumerate(leaves):
        leaf_xp = _NAMESPACE_BY_TYPE.get(type(p)) or _namespace("params", _path(checked, index), p)
        if xp is None:
            xp, device = leaf_xp, array_api_compat.device(p)
        elif leaf_xp is not xp:
            raise TypeError(
                f"params{_path(checked, index)} is a {leaf_xp.__name__} array but params{_path(checked, 0)} is a "
                f"{xp.__name__} array; all params must come from one backend"
            )
        elif array_api_compat.device(p) != device:
            raise ValueError(
                f"params{_path(checked, index)} is on device {array_api_compat.device(p)} but "
                f"params{_path(checked, 0)} is on {device}; all params must be on one device"
            )
        if is_real_floating(xp, p.dtype):
            continue
        if _is_complex(xp, p.dtype):
            raise TypeError(f"params{_path(checked, index)} is complex ({p.dtype}); portopt supports real floating "
                            "params only")
        raise TypeError(f"params{_path(checked, index)} has dtype {p.dtype}; params must be real floating arrays")
    checked.xp, checked.device = xp, device
    return checked


def _path(checked: Leaves, index: int) -> str:
    """The path of leaf ``index``, for an error message (paths are made only when one is raised)."""
    return checked.paths[index]


def _is_complex(xp: Any, dtype: Any) -> bool:
    try:
        return bool(xp.isdtype(dtype, "complex floating"))
    except TypeError:
        return False


def _check_tree(argument: str, treedef: TreeDef, params: Leaves) -> None:
    if treedef != params.treedef:
        raise ValueError(
            f"{argument} has tree structure {treedef.describe()} but params has "
            f"{params.treedef.describe()}"
        )


def _check_like(argument: str, path: str, x: Any, p: Any, params: Leaves, dtype: Any) -> None:
    x_xp = _namespace(argument, path, x)
    if x_xp is not params.xp:
        raise TypeError(
            f"{argument}{path} is a {x_xp.__name__} array but params{path} is a "
            f"{params.xp.__name__} array"
        )
    if array_api_compat.device(x) != params.device:
        raise ValueError(f"{argument}{path} is on device {array_api_compat.device(x)}, params on {params.device}")
    if tuple(x.shape) != tuple(p.shape):
        raise ValueError(f"{argument}{path} has shape {tuple(x.shape)}, params{path} has shape {tuple(p.shape)}")
    if x.dtype != dtype:
        raise TypeError(f"{argument}{path} has dtype {x.dtype}, expected {dtype}")


def check_grads(grads: Any, params: Leaves) -> list:
    """Leaves of ``grads``: same tree, backend, device, shapes and dtypes as the params."""
    leaves, treedef = flatten(grads)
    _check_tree("grads", treedef, params)
    for path, g, p in zip(params.paths, leaves, params.leaves):
        _check_like("grads", path, g, p, params, p.dtype)
    return leaves


def check_state(state: Any, rule_name: str, slot_names: Sequence[str], params: Leaves,
                host_names: Sequence[str] = (), slot_dtype: Callable[[Any, Any], Any] = compute_dtype,
                fixed_dtypes: Mapping[str, Any] | None = None) -> dict[str, list]:
    """Slot leaves of ``state``, checked to belong to this rule and these params (slots of
    ``slot_dtype(xp, param dtype)``: the rule's; a slot named in ``fixed_dtypes`` has that dtype)."""
    if not isinstance(state, State):
        raise TypeError(f"state must be a portopt State (from init), got {type(state).__name__}")
    if state.rule != rule_name:
        raise ValueError(f"state was made by {state.rule}, not {rule_name}")
    if state.torn:
        raise ValueError("state is torn: an in-place step was stopped while writing it, so params and state may "
                         "hold part of a step; restore both from a checkpoint (portopt.load) and step again")
    for field, value in (("slots", state.slots), ("host", state.host)):
        if not isinstance(value, dict):
            raise TypeError(f"state.{field} must be a dict (as init makes it), got {type(value).__name__}")
    if set(state.slots) != set(slot_names):
        raise ValueError(
            f"state has slots {sorted(state.slots)} but this {rule_name} needs {sorted(slot_names)}; "
            "was it made with other options (e.g. amsgrad, momentum, centered)?"
        )
    if set(state.host) != set(host_names):
        raise ValueError(f"state has host entries {sorted(state.host)}, {rule_name} needs {sorted(host_names)}")
    if isinstance(state.step, bool) or not isinstance(state.step, int) or state.step < 0:
        raise ValueError(f"state.step must be an int >= 0, got {state.step!r}")
    slots: dict[str, list] = {}
    for name in slot_names:
        leaves, treedef = flatten(state.slots[name])
        _check_tree(f"state.slots[{name!r}]", treedef, params)
        fixed = fixed_dtypes.get(name) if fixed_dtypes else None
        for path, x, p in zip(params.paths, leaves, params.leaves):
            _check_like(f"state.slots[{name!r}]", path, x, p, params,
                        slot_dtype(params.xp, p.dtype) if fixed is None else fixed)
        slots[name] = leaves
    return slots
