"""portopt's in-place step on torch CPU tensors alone and right after a torch operation.

torch's OpenMP worker threads keep spinning for a while after each parallel region (GNU
libgomp's default wait policy); on a machine with few cores they then compete with
portopt's own thread pool. This prints the step's time alone, right after torch's fused
Adam step (as in a training loop, where backward has just run), and torch's fused step, in
one process. Run it with and without ``OMP_WAIT_POLICY=PASSIVE`` to compare::

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


def _milliseconds(operation: Callable[[], object]) -> float:
    start = time.perf_counter()
    operation()
    return (time.perf_counter() - start) * 1e3


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
    after = []
    for _ in range(arguments.rounds):
        fused.step()
        after.append(_milliseconds(ours))
    torch_fused = [_milliseconds(fused.step) for _ in range(arguments.rounds)]
    print(f"{machine_description()}, torch {torch.__version__}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, {arguments.size:.0e} {arguments.dtype}, "
          f"{arguments.dtype} state; median ms of {arguments.rounds}")
    for name, times in (("portopt step alone", alone), ("portopt step right after torch's", after),
                        ("torch fused step", torch_fused)):
        print(f"  {name:34s} {statistics.median(times):7.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
