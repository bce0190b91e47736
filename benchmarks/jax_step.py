"""``python -m benchmarks.jax_step``: one jitted Adam step on the CPU, portopt against optax.

For each workload (one float32 leaf of 1e3 and of 1e6 parameters), in one interleaved run
(every implementation timed once per round, so both share the machine's state):
``jax.jit(portopt.Adam().update)`` and ``jax.jit`` of ``optax.adam``'s update followed by
``optax.apply_updates``, same hyperparameters, each step waiting for its new params. The
first call (tracing and compiling) is timed apart. optax computes Adam in another order, so
only the times are compared, not the bits.

portopt's jitted step calls back to the host once per step (its host scalars are computed in
Python floats, as eagerly), so on small problems the callback and JAX's slower dispatch of a
computation with a host callback dominate.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

WORKLOADS = {"1e3 float32": 1_000, "1e6 float32": 1_000_000}
LR, BETAS, EPS = 1e-3, (0.9, 0.999), 1e-8


def _arrays(size: int | list[tuple[int, ...]]) -> tuple[Any, Any]:
    """Params and gradients of ``size`` float32 elements (or a list of leaves of these shapes),
    committed to the CPU device."""
    import jax
    import numpy as np

    rng = np.random.default_rng(0)
    device = jax.devices("cpu")[0]

    def leaves(shape: tuple[int, ...]) -> Any:
        return jax.device_put(rng.standard_normal(shape).astype(np.float32), device)

    if isinstance(size, int):
        return leaves((size,)), leaves((size,))
    return [leaves(shape) for shape in size], [leaves(shape) for shape in size]


def portopt_step(size: int | list[tuple[int, ...]]) -> Callable[[], Any]:
    """One ``jax.jit(portopt.Adam().update)`` step per call, on a state it keeps."""
    import jax

    import portopt

    rule = portopt.Adam(lr=LR, betas=BETAS, eps=EPS)
    params, grads = _arrays(size)
    update = jax.jit(rule.update)
    carried = {"params": params, "state": rule.init(params)}

    def step() -> Any:
        carried["params"], carried["state"] = update(carried["params"], grads, carried["state"])
        return jax.block_until_ready(carried["params"])

    return step


def optax_step(size: int | list[tuple[int, ...]]) -> Callable[[], Any]:
    """One jitted ``optax.adam`` update and ``apply_updates`` per call, on a state it keeps."""
    import jax
    import optax  # type: ignore[import-untyped]

    transform = optax.adam(LR, b1=BETAS[0], b2=BETAS[1], eps=EPS)
    params, grads = _arrays(size)

    @jax.jit
    def update(params: Any, grads: Any, state: Any) -> tuple[Any, Any]:
        updates, state = transform.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    carried = {"params": params, "state": transform.init(params)}

    def step() -> Any:
        carried["params"], carried["state"] = update(carried["params"], grads, carried["state"])
        return jax.block_until_ready(carried["params"])

    return step


IMPLEMENTATIONS: dict[str, Callable[[Any], Callable[[], Any]]] = {
    "portopt jax.jit(Adam.update)": portopt_step,
    "optax.adam, jax.jit": optax_step,
}


def _timed(step: Callable[[], Any]) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def run(rounds: int = 50) -> list[dict]:
    """Median ms per step of each implementation on each workload, and its ratio to optax."""
    rows = []
    for workload, size in WORKLOADS.items():
        steps = {name: make(size) for name, make in IMPLEMENTATIONS.items()}
        first = {name: _timed(step) for name, step in steps.items()}  # trace and compile
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(rounds):
            for name, step in steps.items():
                times[name].append(_timed(step))
        medians = {name: statistics.median(samples) for name, samples in times.items()}
        optax_median = medians["optax.adam, jax.jit"]
        for name, median in medians.items():
            rows.append({"workload": workload, "rule": "Adam", "implementation": name, "median_ms": median * 1e3,
                         "first_call_s": first[name], "x_optax": median / optax_median, "rounds": rounds})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.jax_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=50, help="timed steps per implementation and workload")
    args = parser.parse_args(argv)
    print(f"{'workload':<13} {'implementation':<30} {'median ms/step':>15} {'x optax':>8} {'first call s':>13}")
    for row in run(args.rounds):
        print(f"{row['workload']:<13} {row['implementation']:<30} {row['median_ms']:>15.3f} {row['x_optax']:>8.2f} "
              f"{row['first_call_s']:>13.2f}")


if __name__ == "__main__":
    main()
