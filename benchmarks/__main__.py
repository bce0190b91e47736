"""``python -m benchmarks``: time one optimizer step, portopt against torch.optim and the bandwidth bound.

For each workload and rule, in one interleaved run (every implementation timed once per
round, so all share the machine's state): portopt on NumPy arrays and on torch CPU tensors
(the process's fast path, normally ``auto``), and torch.optim with ``foreach=False``,
``foreach=True`` and ``fused=True`` where torch has it on the CPU. The bound is the bytes a
step must move (read params, grads and state; write params and state) divided by the copy
bandwidth measured in the same run. Prints a table, writes JSON, and with ``--readme``
rewrites README.md's performance section.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import portopt
from portopt.conformance.report import machine_description

from .report import add_output_options, report
from .workloads import WORKLOADS

TORCH_PEERS = {"Adam": ("Adam", {}), "AdamW": ("AdamW", {}), "AMSGrad": ("Adam", {"amsgrad": True}),
               "AdaGrad": ("Adagrad", {}), "RMSProp": ("RMSprop", {})}


def bandwidth(nbytes: int = 400_000_000, repeats: int = 7) -> dict[str, float]:
    """Bytes per second of two large memory-bound operations, split over all cores.

    ``copy``: ``np.copyto(dst, src)``, counted as read + write (its write-allocate reads of
    ``dst`` are not counted, so it understates the machine). ``in_place``: ``a += b``,
    counted as two reads and one write: the access pattern of an in-place optimizer step,
    used for the bound.
    """
    a = np.ones(nbytes // 8)
    b = np.ones_like(a)
    workers = os.cpu_count() or 1
    bounds = [(c[0], c[-1] + 1) for c in np.array_split(np.arange(a.size), workers) if len(c)]
    operations = {
        "copy": (lambda lo, hi: np.copyto(a[lo:hi], b[lo:hi]), 2 * a.nbytes),
        "in_place": (lambda lo, hi: np.add(a[lo:hi], b[lo:hi], out=a[lo:hi]), 3 * a.nbytes),
    }
    rates = {}
    with ThreadPoolExecutor(workers) as pool:
        for name, (operation, moved) in operations.items():
            def once() -> None:
                list(pool.map(lambda bound: operation(*bound), bounds))
            once()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                once()
                times.append(time.perf_counter() - start)
            rates[name] = moved / min(times)
    return rates


def bytes_per_step(rule: portopt.Rule, sizes: list[int], dtype: str) -> int:
    item = np.dtype(dtype).itemsize
    state_item = 4 if dtype == "float16" else item
    slots = len(rule.slot_names())
    return sum(n * (3 * item + 2 * slots * state_item) for n in sizes)  # p read+write, g read; slots read+write


class Implementation:
    """One way of taking a step on one workload; ``step()`` is what is timed."""

    def __init__(self, name: str, step, memory=None) -> None:
        self.name, self.step, self.memory = name, step, memory
        self.times: list[float] = []


def _host_arrays(shapes, dtype, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(math.prod(s), dtype=np.float32).astype(dtype).reshape(s) for s in shapes]


def portopt_numpy(rule_name: str, shapes, dtype: str) -> Implementation:
    rule = portopt.RULES[rule_name]()
    params, grads = _host_arrays(shapes, dtype, 0), _host_arrays(shapes, dtype, 1)
    state = rule.init(params)

    def memory() -> int:
        tracemalloc.start()
        tracemalloc.reset_peak()
        rule.step(params, grads, state)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    return Implementation("portopt numpy", lambda: rule.step(params, grads, state), memory)


def portopt_torch(rule_name: str, shapes, dtype: str) -> Implementation:
    import torch

    rule = portopt.RULES[rule_name]()
    params = [torch.from_numpy(a) for a in _host_arrays(shapes, dtype, 0)]
    grads = [torch.from_numpy(a) for a in _host_arrays(shapes, dtype, 1)]
    state = rule.init(params)
    return Implementation("portopt torch", lambda: rule.step(params, grads, state))


def torch_optim(rule_name: str, shapes, dtype: str, mode: str) -> Implementation | None:
    import torch

    name, extra = TORCH_PEERS[rule_name]
    params = [torch.from_numpy(a).requires_grad_(True) for a in _host_arrays(shapes, dtype, 0)]
    for p, g in zip(params, _host_arrays(shapes, dtype, 1)):
        p.grad = torch.from_numpy(g)
    options = {"foreach": False} if mode == "single" else {"foreach": True} if mode == "foreach" else {"fused": True}
    try:
        optimizer = getattr(torch.optim, name)(params, **options, **extra)
        optimizer.step()
    except (RuntimeError, TypeError, ValueError):
        return None  # torch has no such path for this optimizer and dtype on the CPU
    return Implementation(f"torch {mode}", optimizer.step)


def run(workloads: list[str], rules: list[str], rounds: int) -> dict:
    rates = bandwidth()
    results = {"machine": {"cpu": machine_description(), "cores": os.cpu_count(), "python": platform.python_version(),
                           "numpy": np.__version__, "fast_path": portopt.get_fast_path()},
               "bandwidth_GBps": {name: rate / 1e9 for name, rate in rates.items()}, "rows": []}
    try:
        import torch

        results["machine"]["torch"] = torch.__version__
        torch_modes = ["single", "foreach", "fused"]
    except ImportError:
        torch_modes = []
    for workload in workloads:
        shapes, dtype = WORKLOADS[workload]
        sizes = [math.prod(s) for s in shapes]
        for rule_name in rules:
            implementations = [portopt_numpy(rule_name, shapes, dtype)]
            if torch_modes:
                implementations.append(portopt_torch(rule_name, shapes, dtype))
                implementations += [i for m in torch_modes if (i := torch_optim(rule_name, shapes, dtype, m))]
            for implementation in implementations:  # warm-up: compilation, first-touch
                implementation.step()
                implementation.step()
            for _ in range(rounds):
                for implementation in implementations:
                    start = time.perf_counter()
                    implementation.step()
                    implementation.times.append(time.perf_counter() - start)
            bound = bytes_per_step(portopt.RULES[rule_name](), sizes, dtype) / rates["in_place"]
            medians = {i.name: statistics.median(i.times) for i in implementations}
            fused = medians.get("torch fused")
            for implementation in implementations:
                median = medians[implementation.name]
                extra = implementation.memory() if implementation.memory else None
                results["rows"].append({
                    "workload": workload, "rule": rule_name, "implementation": implementation.name,
                    "median_ms": median * 1e3, "bound_ms": bound * 1e3, "x_bound": median / bound,
                    "x_torch_fused": median / fused if fused else None,
                    "peak_extra_MB": extra / 1e6 if extra is not None else None,
                })
            del implementations
            print(f"  done: {workload} {rule_name}", file=sys.stderr)
    return results


def table(results: dict) -> str:
    m = results["machine"]
    lines = [
        f"{m['cpu']}; bandwidth {results['bandwidth_GBps']['in_place']:.1f} GB/s in place "
        f"(`a += b`, the bound's basis), {results['bandwidth_GBps']['copy']:.1f} GB/s by copy; "
        f"NumPy {m['numpy']}, torch {m.get('torch', '-')}, fast path {m['fast_path']}. "
        "Regenerate: `python -m benchmarks --readme README.md`.",
        "",
        "| workload | rule | implementation | median ms/step | × bound | × torch fused | peak extra MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        fused = f"{row['x_torch_fused']:.2f}" if row["x_torch_fused"] is not None else "—"
        extra = f"{row['peak_extra_MB']:.2f}" if row["peak_extra_MB"] is not None else "—"
        lines.append(f"| {row['workload']} | {row['rule']} | {row['implementation']} | {row['median_ms']:.2f} | "
                     f"{row['x_bound']:.2f} | {fused} | {extra} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--rules", nargs="+", default=list(TORCH_PEERS), choices=list(TORCH_PEERS))
    parser.add_argument("--rounds", type=int, default=15)
    add_output_options(parser, "benchmarks/results.json", "performance")
    args = parser.parse_args(argv)
    return report(args, lambda: run(args.workloads, args.rules, args.rounds), table, "performance")


if __name__ == "__main__":
    sys.exit(main())
