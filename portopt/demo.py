"""``portopt demo``: five rules (Adam, AdamW, AMSGrad, AdaGrad, RMSProp) minimise a Rosenbrock valley on every backend found, and the
final parameters are compared bit for bit.

A backend whose bits differ is reported as the conformance suite reports it: a known
exception (listed in portopt/conformance/known_exceptions.toml, with its reason) or a
difference nobody listed; the demo fails only on the latter. With jax installed, ``jax-jit``
steps with ``jax.jit(rule.update)``.

The gradient is elementwise (pairs ``(x, y)``, ``f = 100 (y - x²)² + (1 - x)²``), so the
backends' own arithmetic could agree too; portopt's part is to make the optimizer's agree.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass
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
    update = target.updater(rule)  # rule.update; jax-jit: jax.jit(rule.update)
    for _ in range(steps):
        grads = rosenbrock_gradient(target.xp, params)
        params, state = update(params, grads, state)
    return {name: target.to_numpy(value) for name, value in params.items()}


SAME, KNOWN, DIFFERENT = "same bits", "known exception", "DIFFERENT BITS"


@dataclass(frozen=True)
class Verdict:
    """One backend's result against the reference's: SAME, KNOWN (with the listed reason) or DIFFERENT."""

    backend: str
    status: str
    reason: str = ""


def compare(digests: dict[str, str], rule_name: str, dtype: str) -> list[Verdict]:
    """Each backend's digest against the first one's (the reference, NumPy): the same bits, a
    difference the conformance suite lists as a known exception for that backend, rule and
    dtype (its reason kept), or a difference nobody listed."""
    from portopt.conformance.exceptions import known_exception_for

    reference = next(iter(digests.values()))
    verdicts = []
    for backend, found in digests.items():
        if found == reference:
            verdicts.append(Verdict(backend, SAME))
            continue
        reason = known_exception_for(backend, rule_name, dtype)
        verdicts.append(Verdict(backend, KNOWN, reason) if reason else Verdict(backend, DIFFERENT))
    return verdicts


def summary(verdicts: list[Verdict]) -> str:
    """``same bits`` when every backend agrees, else what differs and how it is classed."""
    if all(v.status == SAME for v in verdicts):
        return SAME
    return "; ".join(f"{v.backend}: {v.status}" for v in verdicts if v.status != SAME)


def main(argv: Sequence[str] | None = None) -> int:
    from portopt.conformance.targets import TARGET_NAMES, find_targets

    parser = argparse.ArgumentParser(prog="portopt demo", description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--size", type=int, default=1000, help="number of (x, y) pairs")
    parser.add_argument("--dtype", default="float32", choices=("float16", "float32", "float64"))
    args = parser.parse_args(argv)
    targets, missing = find_targets((*TARGET_NAMES, "jax-jit"))
    targets = {name: t for name, t in targets.items() if args.dtype in t.dtypes}
    print(f"Rosenbrock valley, {args.size} pairs, {args.steps} steps, {args.dtype}; "
          f"backends: {', '.join(targets)}")
    for name, reason in missing.items():
        print(f"  (not here: {name}: {reason})")
    verdicts: list[Verdict] = []
    with np.errstate(all="ignore"):
        for rule_name, options in DEFAULT_OPTIONS.items():
            rule = portopt.RULES[rule_name](**options)
            results = {name: run(t, rule, args.steps, args.size, args.dtype) for name, t in targets.items()}
            digests = {
                name: hashlib.sha256(b"".join(np.ascontiguousarray(v).tobytes() for v in r.values())).hexdigest()[:16]
                for name, r in results.items()
            }
            found = compare(digests, rule.name, args.dtype)
            verdicts += found
            loss = rosenbrock_loss(next(iter(results.values())))
            print(f"  {rule!r:<70} loss {loss:10.4g}  sha256 {' '.join(f'{n}={d}' for n, d in digests.items())}  "
                  f"{summary(found)}")
    reasons = {v.backend: v.reason for v in verdicts if v.status == KNOWN}
    for backend, reason in reasons.items():
        print(f"  {backend}: {reason}")
    if any(v.status == DIFFERENT for v in verdicts):
        print("backends disagree")
        return 1
    print("every backend gave the same bits" if not reasons else
          "every backend gave the same bits but those whose difference the conformance suite lists as a known exception")
    return 0


if __name__ == "__main__":
    sys.exit(main())
