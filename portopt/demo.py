"""``portopt demo``: five rules (Adam, AdamW, AMSGrad, AdaGrad, RMSProp) minimise a Rosenbrock valley on every backend found, and the
final parameters are compared bit for bit.

The gradient is elementwise (pairs ``(x, y)``, ``f = 100 (y - x²)² + (1 - x)²``), so the
backends' own arithmetic could agree too; portopt's part is to make the optimizer's agree.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from typing import Any

import array_api_compat
import numpy as np

import portopt

DEFAULT_OPTIONS: dict[str, dict[str, Any]] = {
    "Adam": {"lr": 0.01},
    "AdamW": {"lr": 0.01, "weight_decay": 0.001},
    "AMSGrad": {"lr": 0.01},
    "AdaGrad": {"lr": 0.1},
    "RMSProp": {"lr": 0.001, "momentum": 0.9},
}


def rosenbrock_gradient(xp: Any, params: dict) -> dict:
    """Gradient of ``sum(100 (y - x²)² + (1 - x)²)``; constants are 0-d arrays of the dtype."""
    x, y = params["x"], params["y"]

    def c(value: float) -> Any:
        return xp.asarray(value, dtype=x.dtype, device=array_api_compat.device(x))

    gap = y - x * x
    return {"x": c(-400.0) * x * gap - c(2.0) * (c(1.0) - x), "y": c(200.0) * gap}


def rosenbrock_loss(params: dict) -> float:
    x, y = params["x"].astype(np.float64), params["y"].astype(np.float64)
    return float(np.mean(100.0 * (y - x * x) ** 2 + (1.0 - x) ** 2))


def run(target: Any, rule: portopt.Rule, steps: int, size: int, dtype: str) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    start = {"x": rng.uniform(-2, 2, size).astype(dtype), "y": rng.uniform(-1, 3, size).astype(dtype)}
    params = {name: target.asarray(value) for name, value in start.items()}
    state = rule.init(params)
    for _ in range(steps):
        grads = rosenbrock_gradient(target.xp, params)
        params, state = rule.update(params, grads, state)
    return {name: target.to_numpy(value) for name, value in params.items()}


def main(argv: Sequence[str] | None = None) -> int:
    from portopt.conformance.targets import find_targets

    parser = argparse.ArgumentParser(prog="portopt demo", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--size", type=int, default=1000, help="number of (x, y) pairs")
    parser.add_argument("--dtype", default="float32", choices=("float16", "float32", "float64"))
    args = parser.parse_args(argv)
    targets, missing = find_targets()
    targets = {name: t for name, t in targets.items() if args.dtype in t.dtypes}
    print(f"Rosenbrock valley, {args.size} pairs, {args.steps} steps, {args.dtype}; "
          f"backends: {', '.join(targets)}")
    for name, reason in missing.items():
        print(f"  (not here: {name}: {reason})")
    all_agree = True
    with np.errstate(all="ignore"):
        for rule_name, options in DEFAULT_OPTIONS.items():
            rule = portopt.RULES[rule_name](**options)
            results = {name: run(t, rule, args.steps, args.size, args.dtype) for name, t in targets.items()}
            digests = {
                name: hashlib.sha256(b"".join(np.ascontiguousarray(v).tobytes() for v in r.values())).hexdigest()[:16]
                for name, r in results.items()
            }
            agree = len(set(digests.values())) == 1
            all_agree &= agree
            loss = rosenbrock_loss(next(iter(results.values())))
            print(f"  {rule!r:<70} loss {loss:10.4g}  sha256 {' '.join(f'{n}={d}' for n, d in digests.items())}  "
                  f"{'same bits' if agree else 'DIFFERENT BITS'}")
    print("every backend gave the same bits" if all_agree else "backends disagree")
    return 0 if all_agree else 1


if __name__ == "__main__":
    sys.exit(main())
