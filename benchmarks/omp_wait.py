"""portopt's in-place step on torch CPU tensors alone and right after a torch operation.

torch's OpenMP worker threads keep spinning for a while after each parallel region (GNU
libgomp's default wait policy); on a machine with few cores they then compete with any other
threads. portopt therefore runs large calls as a parallel region of torch's own OpenMP team
where torch runs on libgomp (portopt/kernels/team.py). This prints the step's time alone,
right after torch's fused Adam step (as in a training loop, where backward has just run) on
torch's team and on portopt's own thread pool (its way elsewhere), and torch's fused step,
in one process. Run it with and without ``OMP_WAIT_POLICY=PASSIVE`` to compare::

    python -m benchmarks.omp_wait
    OMP_WAIT_POLICY=PASSIVE python -m benchmarks.omp_wait
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import portopt
from portopt.conformance.report import machine_description
from portopt.kernels import team


def _milliseconds(operation: Callable[[], object]) -> float:
    start = time.perf_counter()
    operation()
    return (time.perf_counter() - start) * 1e3


def _after_torch(ours: Callable[[], None], theirs: Callable[[], object], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        theirs()
        times.append(_milliseconds(ours))
    return times


def main(argv: list[str] | None = None) -> int:
    import torch

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=10_000_000, help="elements (default 1e7)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--rounds", type=int, default=15)
    arguments = parser.parse_args(argv)
    dtype = getattr(torch, arguments.dtype)
    generator = torch.Generator().manual_seed(0)
    params = torch.randn(arguments.size, generator=generator).to(dtype)
    grads = torch.randn(arguments.size, generator=generator).to(dtype)
    rule = portopt.Adam(lr=1e-3, state_dtype=arguments.dtype)
    state = rule.init(params)
    peer = torch.nn.Parameter(params.clone())
    peer.grad = grads.clone()
    fused = torch.optim.Adam([peer], lr=1e-3, fused=True)

    def ours() -> None:
        rule.step(params, grads, state)

    for operation in (ours, fused.step, ours, fused.step):  # warm-up
        operation()
    alone = [_milliseconds(ours) for _ in range(arguments.rounds)]
    after = _after_torch(ours, fused.step, arguments.rounds)
    real_team = team.parallel
    team.parallel = lambda: None  # portopt's own thread pool, as where torch is not on libgomp
    try:
        after_on_pool = _after_torch(ours, fused.step, arguments.rounds)
    finally:
        team.parallel = real_team
    torch_fused = [_milliseconds(fused.step) for _ in range(arguments.rounds)]
    print(f"{machine_description()}, torch {torch.__version__}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, {arguments.size:.0e} {arguments.dtype}, "
          f"{arguments.dtype} state; median ms of {arguments.rounds}")
    on = "torch's OpenMP team" if team.parallel() is not None else "portopt's thread pool (no OpenMP team)"
    for name, times in (("portopt step alone", alone), (f"portopt step right after torch's, on {on}", after),
                        ("portopt step right after torch's, on portopt's thread pool", after_on_pool),
                        ("torch fused step", torch_fused)):
        print(f"  {name:60s} {statistics.median(times):7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
