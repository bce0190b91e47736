"""``portopt.minimize``: a first-order rule run to a tolerance, in scipy.optimize's terms, on
any backend; and ``portopt.scipy_method``, the same loop as a custom method of
``scipy.optimize.minimize``.

The loop: evaluate ``f, g`` at ``x``; stop if ``max |projected g| <= tol``; take one step of
the rule; project onto the bounds; repeat up to ``maxiter`` steps. Every operation is the
rule's own (bit-identical on every backend) or exact (the projection, a maximum of absolute
values), so the same elementwise problem gives the same bits from NumPy, torch or CuPy.
"""

from __future__ import annotations

import inspect
import math
import numbers
import sys
from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np

from .backends import adapter_for
from .bounds import Box, box_for, project
from .checks import check_params
from .optimizer import Rule
from .partition import Partition
from .rules import RULES
from .trees import flatten, unflatten

__all__ = ["minimize", "scipy_method", "OptimizeResult", "rule_from_name"]

# the stop reasons: (status, success, message)
CONVERGED = (0, True, "the projected gradient's largest element is within tol")
MAXITER = (1, False, "maxiter steps taken")
NOT_FINITE = (3, False, "the function value or the gradient is not finite")
CALLBACK = (99, False, "the callback asked to stop")
_PROGRESS_FROM = 1000  # the progress bar appears on its own from this many steps (interactive only)


try:  # scipy's own result type where scipy is installed, so results mix with scipy's
    from scipy.optimize import OptimizeResult
except ImportError:  # pragma: no cover - exercised in the tests by hiding scipy
    class OptimizeResult(dict):  # type: ignore[no-redef]
        """The fields of ``scipy.optimize.OptimizeResult``, as a dict with attribute access."""

        def __getattr__(self, name: str) -> Any:
            try:
                return self[name]
            except KeyError:
                raise AttributeError(name) from None

        __setattr__ = dict.__setitem__
        __delattr__ = dict.__delitem__

        def __dir__(self) -> list[str]:
            return list(self.keys())


def rule_from_name(method: Rule | Partition | str, options: dict[str, Any] | None = None) -> Rule | Partition:
    """The rule ``method`` names (case-insensitive: ``"adam"``, ``"AMSGrad"``), constructed with
    ``options``; or ``method`` itself if it is a rule or a partition (then ``options`` must be empty)."""
    if isinstance(method, (Rule, Partition)):
        if options:
            raise TypeError(f"hyperparameters {sorted(options)} were given with a constructed rule "
                            f"{method!r}; give them to its constructor instead")
        return method
    if not isinstance(method, str):
        raise TypeError(f"method must be a portopt rule or a rule's name, got {type(method).__name__}")
    by_lower = {name.lower(): cls for name, cls in RULES.items()}
    cls = by_lower.get(method.lower())
    if cls is None:
        raise ValueError(f"method {method!r} is not a portopt rule; choose one of {', '.join(RULES)}")
    return cls(**(options or {}))


def _as_array_tree(x0: Any) -> Any:
    """``x0``, with a Python number or a nested list of numbers read as a float64 NumPy array (as
    scipy reads it)."""
    leaves, _ = flatten(x0)
    if leaves and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in leaves):
        return np.asarray(x0, dtype=np.float64)
    return x0


def _copy(leaf: Any) -> Any:
    detached = leaf.detach() if hasattr(leaf, "detach") else leaf  # torch: no autograd history
    return array_api_compat.array_namespace(detached).asarray(detached, copy=True)


class _Objective:
    """``fun`` and its gradient as one call ``x -> (f, g)``, counting the calls."""

    def __init__(self, fun: Callable, jac: Any, args: tuple, xp: Any) -> None:
        if not callable(fun):
            raise TypeError(f"fun must be callable, got {type(fun).__name__}")
        if not (jac is None or isinstance(jac, bool) or callable(jac)):
            raise TypeError(f"jac must be True (fun returns (f, g)), a callable jac(x, *args), or None "
                            f"(automatic differentiation on torch and JAX), got {type(jac).__name__}")
        self.fun, self.jac, self.args, self.xp = fun, jac, args, xp
        self.calls = 0
        if jac is None or jac is False:
            self.evaluate = self._differentiated(xp)
        elif jac is True:
            self.evaluate = self._together
        else:
            self.evaluate = self._separately

    def __call__(self, x: Any) -> tuple[Any, Any]:
        self.calls += 1
        f, g = self.evaluate(x)
        x_tree, g_tree = flatten(x)[1], flatten(g)[1]
        if g_tree != x_tree:
            source = "fun's second result" if self.jac is True else "jac"
            raise ValueError(f"the gradient ({source}) must have x0's tree {x_tree.describe()}, got "
                             f"{g_tree.describe()}")
        return f, g

    def _together(self, x: Any) -> tuple[Any, Any]:
        result = self.fun(x, *self.args)
        if not isinstance(result, tuple) or len(result) != 2:
            raise TypeError(f"with jac=True, fun must return (f, g), got {type(result).__name__}")
        return result

    def _separately(self, x: Any) -> tuple[Any, Any]:
        return self.fun(x, *self.args), self.jac(x, *self.args)

    def _differentiated(self, xp: Any) -> Callable[[Any], tuple[Any, Any]]:
        if array_api_compat.is_torch_namespace(xp):
            import torch

            def by_autograd(x: Any) -> tuple[Any, Any]:
                leaves, treedef = flatten(x)
                tracked = [leaf.detach().requires_grad_(True) for leaf in leaves]
                with torch.enable_grad():
                    f = self.fun(unflatten(treedef, tracked), *self.args)
                    grads = torch.autograd.grad(f, tracked)
                return f.detach(), unflatten(treedef, list(grads))

            return by_autograd
        if array_api_compat.is_jax_namespace(xp):
            import jax

            return jax.value_and_grad(lambda x: self.fun(x, *self.args))
        raise ValueError(f"jac is needed for {xp.__name__} arrays: True (fun returns (f, g)) or a callable "
                         "jac(x, *args); automatic differentiation (jac=None) is there for torch and JAX")


def _largest_projected_gradient(xp: Any, x: list, g: list, box: Box | None) -> float:
    """``max |x - P(x - g)|`` over every element (``max |g|`` without bounds); NaN if any is NaN.
    Where ``x - g`` stays in the box that is ``g`` itself, not ``x - (x - g)`` rounded; where it
    leaves, ``x - bound``. A maximum of absolute values is exact in any order."""
    largest = 0.0
    for index, (xi, gi) in enumerate(zip(x, g)):
        if box is not None:
            low, high = box.lower[index], box.upper[index]
            moved = xi - gi
            gi = xp.where(moved < low, xi - low, xp.where(moved > high, xi - high, gi))
        if math.prod(gi.shape) == 0:
            continue
        value = float(xp.max(xp.abs(gi)))
        if not value <= largest:  # a new maximum, or NaN (which then stays)
            largest = value
            if math.isnan(value):
                return value
    return largest


def _calls_with_result(callback: Callable) -> bool:
    """Whether ``callback`` takes scipy's ``intermediate_result`` rather than ``xk``."""
    try:
        return set(inspect.signature(callback).parameters) == {"intermediate_result"}
    except (TypeError, ValueError):
        return False


def _progress_bar(progress: bool | None, maxiter: int) -> Any:
    if progress is None:
        progress = maxiter >= _PROGRESS_FROM and sys.stderr.isatty()
        if not progress:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return None
    elif not progress:
        return None
    else:
        try:
            from tqdm.auto import tqdm
        except ImportError:
            raise ImportError("progress=True needs tqdm: pip install 'portopt[progress]'") from None
    return tqdm(total=maxiter, desc="portopt.minimize", unit="step", leave=False)


def _check_options(maxiter: Any, tol: Any, callback: Any, progress: Any) -> None:
    if isinstance(maxiter, bool) or not isinstance(maxiter, (int, np.integer)) or maxiter < 0:
        raise ValueError(f"maxiter must be an int >= 0, got {maxiter!r}")
    if tol is not None and (isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not float(tol) >= 0):
        raise ValueError(f"tol must be a number >= 0 or None, got {tol!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    if progress is not None and not isinstance(progress, bool):
        raise TypeError(f"progress must be True, False or None, got {type(progress).__name__}")


def minimize(fun: Callable, x0: Any, method: Rule | Partition | str = "adam", *, jac: Any = True, args: Any = (),
             maxiter: int = 1000, tol: float | None = None, callback: Callable | None = None,
             bounds: Any = None, options: dict[str, Any] | None = None,
             progress: bool | None = None) -> Any:
    """Minimise ``fun`` from ``x0`` with a portopt rule; returns a ``scipy.optimize.OptimizeResult``.

    - ``x0``: an array of any backend, or a dict/list/tuple tree of them (a number or a list of
      numbers is read as a float64 NumPy array). ``x0`` is not modified.
    - ``method``: a rule (``portopt.Adam(lr=0.01)``) or a rule's name (``"adam"``), constructed
      with ``options`` as its hyperparameters.
    - ``jac``: ``True`` if ``fun(x, *args)`` returns ``(f, g)``; a callable ``jac(x, *args)``;
      or ``None`` to differentiate ``fun`` automatically (torch autograd, ``jax.grad``).
    - ``tol``: stop when the largest absolute element of the projected gradient is ``<= tol``
      (``None``: run ``maxiter`` steps).
    - ``callback(xk)`` or ``callback(intermediate_result)`` after each step; returning True or
      raising ``StopIteration`` stops the run.
    - ``bounds``: ``scipy.optimize.Bounds`` or ``(min, max)`` pairs (see :mod:`portopt.bounds`);
      ``x0`` and every step are projected onto them.
    - ``progress``: a tqdm progress bar (the ``progress`` extra); by default shown for runs of
      1000 steps or more when stderr is a terminal.

    The result has ``x`` (x0's backend and tree), ``fun`` (a float), ``jac``, ``nit`` (steps
    taken), ``nfev``, ``njev``, ``status``, ``success``, ``message``, and ``state`` (the
    rule's final :class:`portopt.State`).
    """
    rule = rule_from_name(method, options)
    _check_options(maxiter, tol, callback, progress)
    args = args if isinstance(args, tuple) else (args,)
    checked = check_params(_as_array_tree(x0))
    xp, treedef = checked.xp, checked.treedef
    adapter = adapter_for(xp)
    objective = _Objective(fun, jac, args, xp)
    box = None if bounds is None else box_for(bounds, checked.leaves, xp, adapter, checked.device)
    leaves = [_copy(leaf) for leaf in checked.leaves]
    if box is not None:
        leaves = [project(xp, x, low, high) for x, low, high in zip(leaves, box.lower, box.upper)]
    in_place = all(adapter.is_writeable(leaf) for leaf in leaves) and not array_api_compat.is_jax_namespace(xp)
    x = unflatten(treedef, leaves)
    state: Any = rule.init(x)
    f, g = objective(x)
    with_result = callback is not None and _calls_with_result(callback)
    bar = _progress_bar(progress, maxiter)
    reason = MAXITER
    try:
        for _ in range(maxiter):
            largest = _largest_projected_gradient(xp, leaves, flatten(g)[0], box)
            if not (math.isfinite(largest) and math.isfinite(float(f))):
                reason = NOT_FINITE
                break
            if tol is not None and largest <= tol:
                reason = CONVERGED
                break
            if in_place:
                rule.step(x, g, state)
            else:
                x, state = rule.update(x, g, state)
                leaves = flatten(x)[0]
            if box is not None:
                projected = [project(xp, xi, low, high) for xi, low, high in zip(leaves, box.lower, box.upper)]
                if in_place:
                    for xi, pi in zip(leaves, projected):
                        adapter.write(xi, pi)
                else:
                    leaves = projected
                    x = unflatten(treedef, leaves)
            f, g = objective(x)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(fun=f"{float(f):.6g}", refresh=False)
            if callback is not None and _callback_stops(callback, with_result, x, f, state.step):
                reason = CALLBACK
                break
        else:  # maxiter steps taken: the last point may still have converged, or failed
            largest = _largest_projected_gradient(xp, leaves, flatten(g)[0], box)
            if not (math.isfinite(largest) and math.isfinite(float(f))):
                reason = NOT_FINITE
            elif tol is not None and largest <= tol:
                reason = CONVERGED
    finally:
        if bar is not None:
            bar.close()
    status, success, message = reason
    return OptimizeResult(x=x, fun=float(f), jac=g, nit=state.step, nfev=objective.calls, njev=objective.calls,
                          status=status, success=success, message=message, state=state)


def _callback_stops(callback: Callable, with_result: bool, x: Any, f: Any, nit: int) -> bool:
    copy = unflatten(flatten(x)[1], [_copy(leaf) for leaf in flatten(x)[0]])
    try:
        if with_result:
            answer = callback(intermediate_result=OptimizeResult(x=copy, fun=float(f), nit=nit))
        else:
            answer = callback(copy)
    except StopIteration:
        return True
    return isinstance(answer, (bool, np.bool_)) and bool(answer)


def scipy_method(name_or_rule: Rule | Partition | str, **hyperparameters: Any) -> Callable[..., Any]:
    """A custom method for ``scipy.optimize.minimize(fun, x0, jac=..., method=...)`` that runs
    :func:`minimize` with this rule. scipy's ``options={"maxiter": ...}``, ``tol``, ``bounds``
    and ``callback`` are honoured; ``options={"disp": True}`` shows the progress bar.
    """
    rule = rule_from_name(name_or_rule, hyperparameters)

    def method(fun: Callable, x0: Any, args: tuple = (), jac: Any = None, hess: Any = None, hessp: Any = None,
               bounds: Any = None, constraints: Any = (), callback: Callable | None = None,
               maxiter: int = 1000, tol: float | None = None, disp: bool | None = None,
               **unknown: Any) -> Any:
        if unknown:
            raise TypeError(f"options {sorted(unknown)} are not options of portopt's {rule.name}; it takes "
                            "maxiter, tol and disp")
        if hess is not None or hessp is not None:
            raise ValueError(f"portopt's {rule.name} is first-order: hess and hessp are not used, give neither")
        if constraints:
            raise ValueError(f"portopt's {rule.name} handles bounds but not constraints")
        if not (jac is True or callable(jac)):
            raise ValueError(f"portopt's {rule.name} needs the gradient: jac=True or a callable")
        return minimize(fun, x0, rule, jac=jac, args=args, maxiter=maxiter, tol=tol, callback=callback,
                        bounds=bounds, progress=None if disp is None else bool(disp))

    method.__name__ = method.__qualname__ = f"portopt_{rule.name}"
    method.__doc__ = f"portopt's {rule!r} as a scipy.optimize.minimize method."
    return method
