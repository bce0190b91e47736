"""A small MLP in plain NumPy with hand-written gradients, trained with five rules; the same run
on torch and array-api-strict gives the same digests.

The model: 2 -> 16 (ReLU) -> 1, squared loss against labels ±1 on two interleaved half moons.
Forward and backward use only + - * /, comparisons and portopt's fixed-order ``matmul`` /
``pairwise_sum_last_axis``, so the gradients too are bit-identical across backends (a
library matmul would not be).

    python examples/numpy_mlp.py [--steps N] [--plot PATH]
"""

from __future__ import annotations

import argparse
import hashlib
from typing import Any

import numpy as np

import portopt
from portopt.conformance.targets import find_targets
from portopt.reductions import matmul, pairwise_sum_last_axis

RULES = {
    "Adam": portopt.Adam(lr=0.01),
    "AdamW": portopt.AdamW(lr=0.01, weight_decay=0.01),
    "AMSGrad": portopt.AMSGrad(lr=0.01),
    "AdaGrad": portopt.AdaGrad(lr=0.05),
    "RMSProp": portopt.RMSProp(lr=0.002),
}


def moons(n: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Two interleaved half circles (angles on a fixed grid, no randomness)."""
    angle = np.linspace(0.0, np.pi, n // 2)
    upper = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    lower = np.stack([1.0 - np.cos(angle), 0.5 - np.sin(angle)], axis=1)
    x = np.concatenate([upper, lower]).astype(np.float32)
    y = np.concatenate([np.ones(n // 2), -np.ones(n // 2)]).astype(np.float32)[:, None]
    return x, y


def initial_params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.standard_normal((2, 16)) * 0.7).astype(np.float32), "b1": np.zeros(16, np.float32),
        "w2": (rng.standard_normal((16, 1)) * 0.25).astype(np.float32), "b2": np.zeros(1, np.float32),
    }


def loss_and_grads(xp: Any, params: dict, x: Any, y: Any) -> tuple[Any, dict]:
    """Mean squared error and its gradient, by hand; constants as 0-d arrays of the dtype."""
    def c(value: float) -> Any:
        return xp.asarray(value, dtype=x.dtype)

    n = x.shape[0]
    z = matmul(xp, x, params["w1"]) + params["b1"]
    h = xp.where(z > c(0.0), z, c(0.0))
    out = matmul(xp, h, params["w2"]) + params["b2"]
    error = out - y
    loss = pairwise_sum_last_axis(xp, xp.reshape(error * error, (-1,))) / c(n)
    d_out = c(2.0 / n) * error
    d_h = matmul(xp, d_out, xp.permute_dims(params["w2"], (1, 0)))
    d_z = xp.where(z > c(0.0), d_h, c(0.0))
    grads = {
        "w1": matmul(xp, xp.permute_dims(x, (1, 0)), d_z),
        "b1": pairwise_sum_last_axis(xp, xp.permute_dims(d_z, (1, 0))),
        "w2": matmul(xp, xp.permute_dims(h, (1, 0)), d_out),
        "b2": pairwise_sum_last_axis(xp, xp.permute_dims(d_out, (1, 0))),
    }
    return loss, grads


def train(target: Any, rule: portopt.Rule, steps: int) -> tuple[list[float], str]:
    x_host, y_host = moons()
    x, y = target.asarray(x_host), target.asarray(y_host)
    params = {k: target.asarray(v) for k, v in initial_params().items()}
    state = rule.init(params)
    losses = []
    for _ in range(steps):
        loss, grads = loss_and_grads(target.xp, params, x, y)
        losses.append(float(target.to_numpy(loss)))
        params, state = rule.update(params, grads, state)
    digest = hashlib.sha256(b"".join(target.to_numpy(params[k]).tobytes() for k in sorted(params))).hexdigest()
    return losses, digest


def plot(curves: dict[str, list[float]], path: str) -> None:
    from _plotting import new_figure, save_figure

    figure, axis = new_figure(7.0, 3.5)
    for name, losses in curves.items():
        axis.plot(losses, label=name)
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss (MSE)")
    axis.set_title("2-16-1 MLP on two moons, NumPy, hand-written gradients")
    axis.legend()
    save_figure(figure, path)


def main(argv: list[str] | None = None) -> dict[str, dict[str, tuple[list[float], str]]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--plot", metavar="PATH", help="save the loss curves as a PNG (needs matplotlib)")
    args = parser.parse_args(argv)
    targets, _ = find_targets(("numpy", "torch-cpu", "array_api_strict"))
    results: dict[str, dict[str, tuple[list[float], str]]] = {}
    for name, rule in RULES.items():
        results[name] = {label: train(target, rule, args.steps) for label, target in targets.items()}
        digests = {label: digest[:16] for label, (_, digest) in results[name].items()}
        same = len(set(digests.values())) == 1
        losses = results[name]["numpy"][0]
        print(f"{name:8s} loss {losses[0]:.4f} -> {losses[-1]:.4f}   sha256 {digests}   "
              f"{'same bits on every backend' if same else 'BACKENDS DIFFER'}")
    if args.plot:
        plot({name: r["numpy"][0] for name, r in results.items()}, args.plot)
    return results


if __name__ == "__main__":
    main()
