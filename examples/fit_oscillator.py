"""A damped oscillator fitted to noisy data with ``portopt.minimize``, and a Rosenbrock valley
walked inside a box; the same script on NumPy, torch or JAX (only the array library changes)
prints the same SHA-256 digests of the fit and of the whole path.

The data: ``y = A exp(-g t) cos(w t + phi)`` plus Gaussian noise, 200 samples made with NumPy
from a fixed seed and copied to the chosen library, so every backend fits the same bits. The
fit minimises the mean squared residual over ``(A, g, w, phi)`` with Adam, with bounds (``A,
g, w >= 0``, ``|phi| <= pi``), and the gradient written out by hand.

Why the digests can agree: portopt's step is bit-identical on every backend, and so is every
operation of the objective here. It uses only + - * (no division by a 0-d array, which eager
JAX rounds differently), floor, ``where`` and portopt's fixed-order ``pairwise_sum``. The
libraries' own ``exp``, ``cos`` and ``sin`` are not correctly rounded, and they differ in the
last bit (on 10^5 float64 inputs in [-5, 25]: NumPy's and torch's ``exp`` on 0.5%, ``cos`` and
``sin`` on 0.15%; NumPy's and JAX's ``exp`` on 14%), so the objective computes them from + - *
itself (``exp_`` and ``cos_sin`` below). ``--jac auto``
instead differentiates the same loss with torch autograd or ``jax.value_and_grad``: the digests
then come from each framework's derivative code, which orders the operations its own way. They
differ from the formula's, and nothing promises that torch's and JAX's agree with each other.

    python examples/fit_oscillator.py [--backend numpy|torch|jax] [--steps N] [--jac formula|auto]
                                      [--plot PATH] [--valley-plot PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import math
from collections.abc import Callable
from typing import Any

import array_api_compat
import numpy as np

import portopt
from portopt.reductions import pairwise_sum

TRUE = (1.0, 0.25, 2.0, 0.6)  # A, g, w, phi
START = (0.6, 0.5, 1.7, 0.0)
BOUNDS = [(0.0, None), (0.0, None), (0.0, None), (-math.pi, math.pi)]
VALLEY_START, VALLEY_BOX = (-1.5, 2.5), [(-2.0, 0.8), (-1.0, 3.0)]  # the optimum (1, 1) lies outside


# --- the array library: the one thing that changes between backends ---------------------------
def array_library(name: str) -> tuple[Any, Callable[[np.ndarray], Any]]:
    """``(xp, asarray)``: the array-API namespace of ``name`` and a copy of a NumPy array there."""
    if name == "numpy":
        import array_api_compat.numpy as xp

        return xp, lambda a: xp.asarray(a, copy=True)
    if name == "torch":
        import array_api_compat.torch as xp

        import torch

        return xp, lambda a: torch.from_numpy(a.copy())
    if name == "jax":
        import jax

        jax.config.update("jax_enable_x64", True)  # float64 arrays
        import jax.numpy as jnp

        return array_api_compat.array_namespace(jnp.zeros(1)), jnp.asarray
    raise ValueError(f"unknown backend {name!r}: numpy, torch or jax")


def to_numpy(x: Any) -> np.ndarray:
    return np.asarray(x.detach() if hasattr(x, "detach") else x)


# --- exp, cos and sin from + - * only: the same operations, so the same bits, everywhere -------
def constant(xp: Any, like: Any, value: float) -> Any:
    """``value`` as a 0-d array of ``like``'s dtype and device."""
    return xp.asarray(value, dtype=like.dtype, device=array_api_compat.device(like))


def exp_(xp: Any, x: Any) -> Any:
    """``exp(x)`` for ``|x| <= 10``: ``exp(x/16)`` by its Taylor series to degree 13 (Horner), squared
    four times. At most 5e-13 relative error; the point is that it is the same on every backend."""
    y = x * constant(xp, x, 1.0 / 16.0)  # exact: a power of two
    p = constant(xp, x, 1.0 / math.factorial(13))
    for k in range(12, -1, -1):
        p = p * y + constant(xp, x, 1.0 / math.factorial(k))
    for _ in range(4):
        p = p * p
    return p


def cos_sin(xp: Any, x: Any) -> tuple[Any, Any]:
    """``(cos(x), sin(x))``: ``x`` reduced to ``[-pi, pi]`` by a multiple of 2 pi (in two parts,
    Cody and Waite), a Taylor series at an eighth of that, and three angle doublings."""
    high = 6.28125  # 2 pi's first 8 bits: k * high is exact
    low = 2.0 * math.pi - high
    k = xp.floor(x * constant(xp, x, 1.0 / (2.0 * math.pi)) + constant(xp, x, 0.5))
    h = ((x - k * constant(xp, x, high)) - k * constant(xp, x, low)) * constant(xp, x, 0.125)
    h2 = h * h
    s = constant(xp, x, (-1.0) ** 7 / math.factorial(15))
    for n in range(6, -1, -1):  # sin h = h (1 - h²/3! + h⁴/5! - ...)
        s = s * h2 + constant(xp, x, (-1.0) ** n / math.factorial(2 * n + 1))
    s = s * h
    c = constant(xp, x, 1.0 / math.factorial(16))
    for n in range(7, -1, -1):  # cos h = 1 - h²/2! + h⁴/4! - ...
        c = c * h2 + constant(xp, x, (-1.0) ** n / math.factorial(2 * n))
    two = constant(xp, x, 2.0)
    for _ in range(3):
        s, c = two * s * c, c * c - s * s
    return c, s


# --- the damped oscillator ---------------------------------------------------------------------
def oscillator_data(samples: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Times and noisy observations, made once with NumPy (the same data for every backend)."""
    t = np.linspace(0.0, 10.0, samples)
    amplitude, damping, frequency, phase = TRUE
    clean = amplitude * np.exp(-damping * t) * np.cos(frequency * t + phase)
    return t, clean + 0.05 * np.random.default_rng(seed).standard_normal(samples)


def oscillator_objective(xp: Any, t: Any, y: Any) -> tuple[Callable, Callable]:
    """``(loss_and_gradient, loss)`` of the mean squared residual over ``x = (A, g, w, phi)``."""
    scale = constant(xp, t, 1.0 / t.shape[0])

    def parts(x: Any) -> tuple:
        amplitude, damping, frequency, phase = x[0], x[1], x[2], x[3]
        decay = exp_(xp, -(damping * t))
        cosine, sine = cos_sin(xp, frequency * t + phase)
        residual = amplitude * decay * cosine - y
        return amplitude, decay, cosine, sine, residual

    def loss(x: Any) -> Any:
        residual = parts(x)[-1]
        return pairwise_sum(xp, [residual * residual], residual.dtype) * scale

    def loss_and_gradient(x: Any) -> tuple[Any, Any]:
        amplitude, decay, cosine, sine, residual = parts(x)
        weighted = (residual + residual) * decay  # 2 r e
        total = lambda values: pairwise_sum(xp, [values], values.dtype) * scale  # noqa: E731
        gradient = xp.stack([
            total(weighted * cosine),                           # dL/dA   = 2/N sum r e cos
            -(amplitude * total(weighted * cosine * t)),        # dL/dg   = -2/N A sum r e cos t
            -(amplitude * total(weighted * sine * t)),          # dL/dw   = -2/N A sum r e sin t
            -(amplitude * total(weighted * sine)),              # dL/dphi = -2/N A sum r e sin
        ])
        return pairwise_sum(xp, [residual * residual], residual.dtype) * scale, gradient

    return loss_and_gradient, loss


# --- the Rosenbrock valley in a box ------------------------------------------------------------
def valley(xp: Any) -> Callable:
    """``f = (1 - x)² + 100 (y - x²)²`` and its gradient, by hand."""
    def loss_and_gradient(p: Any) -> tuple[Any, Any]:
        x, y = p[0], p[1]
        gap = y - x * x
        one_minus = constant(xp, p, 1.0) - x
        gradient = xp.stack([constant(xp, p, -400.0) * x * gap - constant(xp, p, 2.0) * one_minus,
                             constant(xp, p, 200.0) * gap])
        return one_minus * one_minus + constant(xp, p, 100.0) * gap * gap, gradient

    return loss_and_gradient


# --- the runs --------------------------------------------------------------------------------
def run(fun: Callable, x0: Any, rule: portopt.Rule, steps: int, bounds: list, jac: Any = True) -> dict[str, Any]:
    """``portopt.minimize`` with the path recorded: every point (x0 and each step's) and loss."""
    path, losses = [to_numpy(x0)], []

    def record(intermediate_result: Any) -> None:
        path.append(to_numpy(intermediate_result.x))
        losses.append(intermediate_result.fun)

    result = portopt.minimize(fun, x0, rule, jac=jac, maxiter=steps, bounds=bounds, callback=record)
    x = to_numpy(result.x)
    return {"x": x, "fun": result.fun, "path": np.stack(path), "losses": np.array(losses), "nit": result.nit,
            "fit_sha256": hashlib.sha256(x.tobytes()).hexdigest(),
            "path_sha256": hashlib.sha256(b"".join(p.tobytes() for p in path)).hexdigest()}


def fit(backend: str, steps: int, jac: str = "formula") -> dict[str, Any]:
    xp, asarray = array_library(backend)
    t_host, y_host = oscillator_data()
    loss_and_gradient, loss = oscillator_objective(xp, asarray(t_host), asarray(y_host))
    if jac == "auto":
        if backend == "numpy":
            raise ValueError("--jac auto differentiates with torch or JAX: choose --backend torch or jax")
        return run(loss, asarray(np.array(START)), portopt.Adam(lr=0.02), steps, BOUNDS, jac=None)
    return run(loss_and_gradient, asarray(np.array(START)), portopt.Adam(lr=0.02), steps, BOUNDS)


def walk_valley(backend: str, steps: int) -> dict[str, Any]:
    xp, asarray = array_library(backend)
    return run(valley(xp), asarray(np.array(VALLEY_START)), portopt.Adam(lr=0.05), steps, VALLEY_BOX)


# --- the figures -------------------------------------------------------------------------------
def plot_fit(result: dict[str, Any], backend: str, path: str) -> None:
    from _plotting import new_figure, save_figure

    t, y = oscillator_data()
    figure, (data_axis, loss_axis, path_axis) = new_figure(11.0, 3.4, columns=3)
    fine = np.linspace(t[0], t[-1], 600)
    amplitude, damping, frequency, phase = result["x"]
    data_axis.plot(t, y, ".", markersize=3, color="gray", label="data")
    data_axis.plot(fine, TRUE[0] * np.exp(-TRUE[1] * fine) * np.cos(TRUE[2] * fine + TRUE[3]), ":", color="black",
                   label="truth")
    data_axis.plot(fine, amplitude * np.exp(-damping * fine) * np.cos(frequency * fine + phase), color="C0",
                   label="fit")
    data_axis.set_xlabel("t")
    data_axis.set_ylabel("y")
    data_axis.set_title("damped oscillator, 200 noisy samples")
    data_axis.legend(fontsize=8)
    loss_axis.plot(np.arange(1, len(result["losses"]) + 1), result["losses"])
    loss_axis.set_xscale("log")
    loss_axis.set_yscale("log")
    loss_axis.set_xlabel("step")
    loss_axis.set_ylabel("mean squared residual")
    loss_axis.set_title(f"Adam(lr=0.02), {result['nit']} steps")
    # the loss over (w, g) with A and phi at the fit, and the path projected on that plane
    w_grid, g_grid = np.meshgrid(np.linspace(1.5, 2.3, 120), np.linspace(0.0, 0.7, 100))
    model = amplitude * np.exp(-g_grid[..., None] * t) * np.cos(w_grid[..., None] * t + phase)
    surface = np.mean((model - y) ** 2, axis=-1)
    path_axis.contourf(w_grid, g_grid, np.log10(surface), levels=20, cmap="viridis")
    path_axis.plot(result["path"][:, 2], result["path"][:, 1], color="white", linewidth=1.2)
    path_axis.plot(*result["path"][0, [2, 1]], "o", color="white", markersize=4)
    path_axis.plot(TRUE[2], TRUE[1], "x", color="red", markersize=7, label="truth")
    path_axis.set_xlabel("frequency w")
    path_axis.set_ylabel("damping g")
    path_axis.set_title("path in (w, g); log10 loss at the fit's A, phi", fontsize=9)
    path_axis.legend(fontsize=8, loc="upper right")
    figure.suptitle(f"portopt.minimize on {backend}: fit sha256 {result['fit_sha256'][:16]}, "
                    f"path sha256 {result['path_sha256'][:16]}", fontsize=9)
    save_figure(figure, path)


def plot_valley(result: dict[str, Any], backend: str, path: str) -> None:
    from _plotting import new_figure, save_figure

    figure, axis = new_figure(5.5, 4.2)
    from matplotlib.patches import Rectangle

    x_grid, y_grid = np.meshgrid(np.linspace(-2.2, 1.6, 300), np.linspace(-1.2, 3.2, 300))
    surface = (1 - x_grid) ** 2 + 100 * (y_grid - x_grid**2) ** 2
    axis.contourf(x_grid, y_grid, np.log10(surface + 1e-3), levels=25, cmap="viridis")
    (x_low, x_high), (y_low, y_high) = VALLEY_BOX
    axis.add_patch(Rectangle((x_low, y_low), x_high - x_low, y_high - y_low, fill=False, edgecolor="white",
                             linestyle="--", label="bounds"))
    axis.plot(result["path"][:, 0], result["path"][:, 1], color="orange", linewidth=1.2, label="Adam's path")
    axis.plot(*VALLEY_START, "o", color="orange", markersize=4)
    axis.plot(1.0, 1.0, "x", color="red", markersize=7, label="unconstrained minimum (1, 1)")
    axis.set_xlabel("x")
    axis.set_ylabel("y")
    axis.set_title(f"Rosenbrock valley, Adam(lr=0.05) in a box, {backend}\n"
                   f"{result['nit']} steps, end ({result['x'][0]:.3f}, {result['x'][1]:.3f}), path sha256 "
                   f"{result['path_sha256'][:16]}", fontsize=9)
    axis.legend(fontsize=8, loc="lower left")
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("numpy", "torch", "jax"), default="numpy")
    parser.add_argument("--steps", type=int, default=3000, help="steps of each run (default 3000)")
    parser.add_argument("--jac", choices=("formula", "auto"), default="formula",
                        help="the oscillator's gradient: by hand (default) or by torch/JAX autodiff")
    parser.add_argument("--plot", metavar="PATH", help="save the fit, loss and path as a PNG (needs matplotlib)")
    parser.add_argument("--valley-plot", metavar="PATH", help="save the Rosenbrock path as a PNG")
    args = parser.parse_args(argv)
    with np.errstate(all="ignore"):
        results = {"oscillator": fit(args.backend, args.steps, args.jac), "valley": walk_valley(args.backend, args.steps)}
    fitted = results["oscillator"]
    print(f"{args.backend}: oscillator (A, g, w, phi) = ({', '.join(f'{v:.4f}' for v in fitted['x'])}), "
          f"truth {TRUE}, loss {fitted['fun']:.6f} after {fitted['nit']} steps (jac: {args.jac})")
    print(f"  fit sha256 {fitted['fit_sha256']}\n  path sha256 {fitted['path_sha256']}")
    walked = results["valley"]
    print(f"{args.backend}: Rosenbrock in {VALLEY_BOX}: ({walked['x'][0]:.4f}, {walked['x'][1]:.4f}), "
          f"f {walked['fun']:.6f}\n  fit sha256 {walked['fit_sha256']}\n  path sha256 {walked['path_sha256']}")
    if args.plot:
        plot_fit(fitted, args.backend, args.plot)
    if args.valley_plot:
        plot_valley(walked, args.backend, args.valley_plot)
    return results


if __name__ == "__main__":
    main()
