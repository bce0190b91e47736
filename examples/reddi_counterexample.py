"""Reddi, Kale & Kumar (2018): Adam goes to the worst point of a simple online problem; AMSGrad does not.

f_t(x) = C x when t mod 3 == 1, else -x, for x in [-1, 1] and C > 2. The regret-minimising
point is x = -1 (the average gradient (C - 2)/3 is positive). With beta1 = 0 and
beta2 = 1 / (1 + C^2), Adam's large gradient C is damped by its own second moment while the
two -1 gradients are not, and x drifts to +1; AMSGrad keeps the largest second moment and
goes to -1. Step size alpha / sqrt(t), projection onto [-1, 1] after each step
(portopt.minimize with bounds).

    python examples/reddi_counterexample.py [--steps N] [--plot PATH]
"""

from __future__ import annotations

import argparse
import math

import numpy as np

import portopt


def run(rule: portopt.Rule, steps: int, c: float) -> np.ndarray:
    """x after each of ``steps`` steps of ``rule`` on the online problem, projected onto [-1, 1]."""
    path = [0.0]
    calls = iter(range(1, steps + 2))  # fun is called at x0 and after each step: call t gives f_t

    def loss_and_gradient(x: np.ndarray) -> tuple[float, np.ndarray]:
        t = next(calls)
        gradient = c if t % 3 == 1 else -1.0
        return gradient * float(x[0]), np.array([gradient])

    portopt.minimize(loss_and_gradient, np.array([0.0]), rule, maxiter=steps, bounds=[(-1.0, 1.0)],
                     callback=lambda x: path.append(float(x[0])))
    return np.array(path)


def trajectories(steps: int = 3000, c: float = 3.0, alpha: float = 0.5) -> dict[str, np.ndarray]:
    betas = (0.0, 1.0 / (1.0 + c * c))
    lr = lambda steps_taken: alpha / math.sqrt(steps_taken + 1)  # noqa: E731 - a schedule
    return {
        "Adam": run(portopt.Adam(lr=lr, betas=betas), steps, c),
        "AMSGrad": run(portopt.AMSGrad(lr=lr, betas=betas), steps, c),
    }


def plot(paths: dict[str, np.ndarray], path: str) -> None:
    from _plotting import new_figure, save_figure

    figure, axis = new_figure(7.0, 3.5)
    for name, xs in paths.items():
        axis.plot(xs, label=name)
    axis.axhline(-1.0, color="gray", linestyle=":", label="optimum x = -1")
    axis.set_xlabel("step t")
    axis.set_ylabel("x_t")
    axis.set_title("Reddi et al. (2018): f_t(x) = 3x if t mod 3 = 1 else -x, x in [-1, 1]")
    axis.legend()
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict[str, np.ndarray]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--plot", metavar="PATH", help="save the trajectories as a PNG (needs matplotlib)")
    args = parser.parse_args(argv)
    paths = trajectories(args.steps)
    for name, xs in paths.items():
        print(f"{name:8s} x after {args.steps} steps: {xs[-1]:+.4f}")
    if args.plot:
        plot(paths, args.plot)
    return paths


if __name__ == "__main__":
    main()
