"""``python -m benchmarks``: time one optimizer step, portopt against torch.optim and the bandwidth bound.

For each workload and rule, in one interleaved run (every implementation timed once per
round, so all share the machine's state): portopt on NumPy arrays and on torch CPU tensors
(the process's fast path, normally ``auto``), and torch.optim by default (on the CPU its
for-loop), with ``foreach=True`` and with ``fused=True`` where torch has it on the CPU.
Small problems add portopt's ``update``, the torch drop-in and a hand-written NumPy loop
(benchmarks/hand.py). The bound is the bytes a step must move (read params, grads and
state; write params and state) divided by the bandwidth measured in the same run. Prints
tables, writes JSON, and with ``--readme docs/performance.md`` rewrites its performance section.
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
from portopt.backends import adapter_for
from portopt.conformance.report import machine_description
from portopt.numerics import host_dtype

from .report import add_output_options, report
from .workloads import WORKLOADS, Workload

# the benchmarked rules; their torch.optim peers come from the rules' registry entries
BENCHMARKED = ("Adam", "AdamW", "AMSGrad", "AdaGrad", "RMSProp")
TORCH_PEERS = {name: (portopt.RULES[name].torch_peer.name, dict(portopt.RULES[name].torch_peer.options))
               for name in BENCHMARKED}


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
            def once(operation=operation) -> None:
                list(pool.map(lambda bound: operation(*bound), bounds))
            once()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                once()
                times.append(time.perf_counter() - start)
            rates[name] = moved / min(times)
    return rates


def bytes_per_step(rule: portopt.Rule, sizes: list[int], dtype: str, state_dtype: str | None = None) -> int:
    item = host_dtype(dtype).itemsize
    state_item = host_dtype(state_dtype).itemsize if state_dtype else 4 if item == 2 else item
    slots = len(rule.slot_names())
    return sum(n * (3 * item + 2 * slots * state_item) for n in sizes)  # p read+write, g read; slots read+write


class Implementation:
    """One way of taking a step on one workload; ``step()`` is what is timed (``repeat`` steps
    per sample for small workloads, whose one step is a few microseconds)."""

    def __init__(self, name: str, step, memory=None, repeat: int = 1, setup=None) -> None:
        self.name, self.memory, self.repeat, self.setup = name, memory, repeat, setup
        self.times: list[float] = []
        if repeat == 1:
            self.step = step
        else:
            def steps() -> None:
                for _ in range(repeat):
                    step()
            self.step = steps


def _host_arrays(shapes, dtype, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(math.prod(s), dtype=np.float32).astype(host_dtype(dtype)).reshape(s)
            for s in shapes]


def _torch_tensor(array: np.ndarray):
    import torch

    if array.dtype.name == "bfloat16":  # torch cannot take ml_dtypes' arrays: their bits
        import array_api_compat.torch as xp

        return adapter_for(xp).bfloat16_from_bits(array.view(np.uint16))
    return torch.from_numpy(array)


def _rule(rule_name: str, workload: Workload) -> portopt.Rule:
    options = {name: value for name, value in (("state_dtype", workload.state_dtype),
                                               ("master_weights", workload.master_weights)) if value}
    return portopt.RULES[rule_name](**options)


def _tree(leaves: list, kind: str):
    return {f"x{i}": leaf for i, leaf in enumerate(leaves)} if kind == "dict" else leaves


def portopt_numpy(rule_name: str, workload: Workload) -> Implementation:
    rule = _rule(rule_name, workload)
    params = _tree(_host_arrays(workload.shapes, workload.dtype, 0), workload.tree)
    grads = _tree(_host_arrays(workload.shapes, workload.dtype, 1), workload.tree)
    state = rule.init(params)

    def memory() -> int:
        tracemalloc.start()
        tracemalloc.reset_peak()
        rule.step(params, grads, state)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    return Implementation("portopt numpy step", lambda: rule.step(params, grads, state), memory, workload.repeat)


def portopt_numpy_update(rule_name: str, workload: Workload) -> Implementation:
    rule = _rule(rule_name, workload)
    params = _tree(_host_arrays(workload.shapes, workload.dtype, 0), workload.tree)
    grads = _tree(_host_arrays(workload.shapes, workload.dtype, 1), workload.tree)
    carried = [params, rule.init(params)]

    def step() -> None:
        carried[0], carried[1] = rule.update(carried[0], grads, carried[1])

    return Implementation("portopt numpy update", step, repeat=workload.repeat)


def hand_numpy(rule_name: str, workload: Workload) -> Implementation:
    from .hand import hand_loop

    params = _host_arrays(workload.shapes, workload.dtype, 0)
    grads = _host_arrays(workload.shapes, workload.dtype, 1)
    step = hand_loop(rule_name, params)
    return Implementation("hand-written numpy", lambda: step(grads), repeat=workload.repeat)


def portopt_torch(rule_name: str, workload: Workload) -> Implementation:

    rule = _rule(rule_name, workload)
    params = _tree([_torch_tensor(a) for a in _host_arrays(workload.shapes, workload.dtype, 0)], workload.tree)
    grads = _tree([_torch_tensor(a) for a in _host_arrays(workload.shapes, workload.dtype, 1)], workload.tree)
    state = rule.init(params)
    return Implementation("portopt torch step", lambda: rule.step(params, grads, state), repeat=workload.repeat)


def _torch_params(workload: Workload) -> list:

    params = [_torch_tensor(a).requires_grad_(True) for a in _host_arrays(workload.shapes, workload.dtype, 0)]
    for p, g in zip(params, _host_arrays(workload.shapes, workload.dtype, 1)):
        p.grad = _torch_tensor(g)
    return params


def portopt_drop_in(rule_name: str, workload: Workload) -> Implementation:
    import portopt.torch as drop_ins

    optimizer = getattr(drop_ins, rule_name)(_torch_params(workload))
    return Implementation("portopt drop-in", optimizer.step, repeat=workload.repeat)


def torch_optim(rule_name: str, workload: Workload, mode: str) -> Implementation | None:
    import torch

    name, extra = TORCH_PEERS[rule_name]
    params = _torch_params(workload)
    options = {} if mode == "default" else {"foreach": True} if mode == "foreach" else {"fused": True}
    try:
        optimizer = getattr(torch.optim, name)(params, **options, **extra)
        optimizer.step()
    except (RuntimeError, TypeError, ValueError):
        return None  # torch has no such path for this optimizer and dtype on the CPU
    return Implementation(f"torch {mode}", optimizer.step, repeat=workload.repeat)


def jax_jitted(rule_name: str, workload: Workload) -> list[Implementation]:
    """``jax.jit(portopt.Adam().update)`` beside jitted ``optax.adam``, for float32 Adam where JAX
    and optax are installed (benchmarks/jax_step.py: each step waits for its new params)."""
    if rule_name != "Adam" or workload.dtype != "float32" or workload.small or workload.state_dtype:
        return []
    try:
        import jax  # noqa: F401
        import optax  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return []
    from . import jax_step

    return [Implementation(name, make(list(workload.shapes))) for name, make in jax_step.IMPLEMENTATIONS.items()]


def torch_optimi(rule_name: str, workload: Workload) -> Implementation | None:
    """torch-optimi's Adam/AdamW with ``kahan_sum=True`` beside portopt's ``master_weights="kahan"``
    (what low-precision training with compensation is measured against), where torch-optimi is installed."""
    if workload.master_weights != "kahan" or rule_name not in ("Adam", "AdamW"):
        return None
    try:
        import optimi
    except ImportError:
        return None
    optimizer = getattr(optimi, rule_name)(_torch_params(workload), lr=1e-3, kahan_sum=True)  # torch.optim's default lr
    optimizer.step()
    return Implementation("torch-optimi kahan_sum", optimizer.step, repeat=workload.repeat)


def clipping_implementations(workload: Workload) -> list[Implementation]:
    """``clip_grad_norm_`` on the workload's gradients: torch's, portopt's drop-in (the
    fixed-order norm), and :func:`portopt.clip_by_global_norm` (new arrays) and
    :func:`portopt.clip_by_global_norm_` (in place) on NumPy arrays; once where
    the gradients are scaled (max_norm half the norm; they are put back before each call,
    untimed) and once where they are within max_norm (nothing to scale)."""
    grads = _host_arrays(workload.shapes, workload.dtype, 1)
    half = 0.5 * float(portopt.global_norm(grads))
    implementations = []
    for label, max_norm in (("scales", half), ("within max_norm", 1e30)):
        implementations.append(Implementation(f"portopt clip_by_global_norm numpy, {label}",
                                              lambda m=max_norm: portopt.clip_by_global_norm(grads, m)))
        own = [g.copy() for g in grads]

        def put_back(own=own) -> None:
            for mine, g in zip(own, grads):
                np.copyto(mine, g)

        implementations.append(Implementation(f"portopt clip_by_global_norm_ numpy (in place), {label}",
                                              lambda m=max_norm, o=own: portopt.clip_by_global_norm_(o, m),
                                              setup=put_back))
    try:
        import portopt.torch as drop_ins
        import torch
    except ImportError:
        return implementations
    for label, max_norm in (("scales", half), ("within max_norm", 1e30)):
        for name, clip in (("portopt.torch.clip_grad_norm_", drop_ins.clip_grad_norm_),
                           ("torch clip_grad_norm_", torch.nn.utils.clip_grad_norm_)):
            params = _torch_params(workload)

            def restore(params=params) -> None:
                for p, g in zip(params, grads):
                    p.grad.copy_(torch.from_numpy(g))

            implementations.append(Implementation(f"{name}, {label}", lambda c=clip, p=params, m=max_norm: c(p, m),
                                                  setup=restore))
    return implementations


def run(workloads: list[str], rules: list[str], rounds: int) -> dict:
    rates = bandwidth()
    results = {"machine": {"cpu": machine_description(), "cores": os.cpu_count(), "python": platform.python_version(),
                           "numpy": np.__version__, "fast_path": portopt.get_fast_path()},
               "bandwidth_GBps": {name: rate / 1e9 for name, rate in rates.items()}, "rows": [], "clipping": []}
    try:
        import torch

        results["machine"]["torch"] = torch.__version__
        torch_modes = ["default", "foreach", "fused"]
    except ImportError:
        torch_modes = []
    for workload_name in workloads:
        workload = WORKLOADS[workload_name]
        sizes = [math.prod(s) for s in workload.shapes]
        if workload.clipping:
            _time_clipping(results, workload_name, workload, rounds)
            continue
        for rule_name in rules:
            # NumPy has no bfloat16 params of its own (ml_dtypes' are not an array-API dtype)
            implementations = [portopt_numpy(rule_name, workload)] if workload.dtype != "bfloat16" else []
            if workload.small:
                implementations += [portopt_numpy_update(rule_name, workload), hand_numpy(rule_name, workload)]
            if torch_modes:
                implementations.append(portopt_torch(rule_name, workload))
                if workload.small:
                    implementations.append(portopt_drop_in(rule_name, workload))
                implementations += [i for m in torch_modes if (i := torch_optim(rule_name, workload, m))]
                implementations += [i for i in (torch_optimi(rule_name, workload),) if i is not None]
            implementations += jax_jitted(rule_name, workload)
            for implementation in implementations:  # warm-up: compilation, first-touch
                implementation.step()
                implementation.step()
            for _ in range(rounds):
                for implementation in implementations:
                    start = time.perf_counter()
                    implementation.step()
                    implementation.times.append((time.perf_counter() - start) / implementation.repeat)
            bound = bytes_per_step(_rule(rule_name, workload), sizes, workload.dtype,
                                   workload.state_dtype) / rates["in_place"]
            medians = {i.name: statistics.median(i.times) for i in implementations}
            fused = medians.get("torch fused")
            hand = medians.get("hand-written numpy")
            default = medians.get("torch default")
            foreach = medians.get("torch foreach")
            optax = medians.get("optax.adam, jax.jit")
            for implementation in implementations:
                median = medians[implementation.name]
                extra = implementation.memory() if implementation.memory else None
                results["rows"].append({
                    "workload": workload_name, "rule": rule_name, "implementation": implementation.name,
                    "median_ms": median * 1e3, "bound_ms": bound * 1e3, "x_bound": median / bound,
                    "x_torch_fused": median / fused if fused else None,
                    "x_hand": median / hand if hand else None,
                    "x_torch_default": median / default if default else None,
                    "x_torch_foreach": median / foreach if foreach else None,
                    "x_optax": median / optax if optax else None,
                    "peak_extra_MB": extra / 1e6 if extra is not None else None,
                })
            del implementations
            print(f"  done: {workload_name} {rule_name}", file=sys.stderr)
    return results


def _time_clipping(results: dict, workload_name: str, workload: Workload, rounds: int) -> None:
    implementations = clipping_implementations(workload)
    for implementation in implementations:
        implementation.step()
    for _ in range(3 * rounds):  # one call per sample: more samples
        for implementation in implementations:
            if implementation.setup is not None:
                implementation.setup()
            start = time.perf_counter()
            implementation.step()
            implementation.times.append(time.perf_counter() - start)
    medians = {i.name: statistics.median(i.times) for i in implementations}
    for implementation in implementations:
        label = implementation.name.split(", ")[-1]
        peer = medians.get(f"torch clip_grad_norm_, {label}")
        median = medians[implementation.name]
        results["clipping"].append({"workload": workload_name, "implementation": implementation.name,
                                    "median_ms": median * 1e3, "x_torch": median / peer if peer else None})
    print(f"  done: {workload_name} clipping", file=sys.stderr)


def table(results: dict) -> str:
    m = results["machine"]
    rows = results["rows"]
    large = [row for row in rows if not WORKLOADS.get(row["workload"], WORKLOADS["1e7 float32"]).small]
    small = [row for row in rows if WORKLOADS.get(row["workload"], WORKLOADS["1e7 float32"]).small]
    lines = [
        f"{m['cpu']}; bandwidth {results['bandwidth_GBps']['in_place']:.1f} GB/s in place "
        f"(`a += b`, the bound's basis), {results['bandwidth_GBps']['copy']:.1f} GB/s by copy; "
        f"NumPy {m['numpy']}, torch {m.get('torch', '-')}, fast path {m['fast_path']}. "
        "Regenerate: `python -m benchmarks --readme docs/performance.md`.",
    ]

    def ratio(value):
        return f"{value:.2f}" if value is not None else "—"

    if large:
        lines += ["", "| workload | rule | implementation | median ms/step | × bound | × torch fused | peak extra MB |",
                  "|---|---|---|---|---|---|---|"]
        for row in large:
            extra = f"{row['peak_extra_MB']:.2f}" if row["peak_extra_MB"] is not None else "—"
            lines.append(f"| {row['workload']} | {row['rule']} | {row['implementation']} | {row['median_ms']:.2f} | "
                         f"{row['x_bound']:.2f} | {ratio(row['x_torch_fused'])} | {extra} |")
    from .jax_step import IMPLEMENTATIONS as JAX_IMPLEMENTATIONS

    jax_rows = [row for row in large if row["implementation"] in JAX_IMPLEMENTATIONS and row.get("x_optax")]
    if jax_rows:
        lines += ["", "JAX on the CPU (ms per step, each step waiting for its params; portopt's jitted step "
                  "calls the host once per step for its scalars):", "",
                  "| workload | rule | implementation | median ms/step | × optax.adam jitted |", "|---|---|---|---|---|"]
        for row in jax_rows:
            lines.append(f"| {row['workload']} | {row['rule']} | {row['implementation']} | {row['median_ms']:.2f} | "
                         f"{ratio(row['x_optax'])} |")
    if small:
        lines += ["", "Small problems (µs per step; ratios to the hand-written NumPy loop and to torch.optim's "
                  "default and foreach steps, in the same run):", "",
                  "| workload | rule | implementation | µs/step | × hand numpy | × torch default | × torch foreach |",
                  "|---|---|---|---|---|---|---|"]
        for row in small:
            lines.append(f"| {row['workload']} | {row['rule']} | {row['implementation']} | {row['median_ms'] * 1e3:.1f} | "
                         f"{ratio(row.get('x_hand'))} | {ratio(row.get('x_torch_default'))} | "
                         f"{ratio(row.get('x_torch_foreach'))} |")
    if results.get("clipping"):
        lines += ["", "Gradient clipping by the global norm (ms per call; the norm is portopt's fixed-order one, "
                  "the same bits on every backend):", "",
                  "| gradients | implementation, case | median ms/call | × torch clip_grad_norm_ (same case) |",
                  "|---|---|---|---|"]
        for row in results["clipping"]:
            lines.append(f"| {row['workload']} | {row['implementation']} | {row['median_ms']:.3f} | "
                         f"{ratio(row['x_torch'])} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--rules", nargs="+", default=list(BENCHMARKED), choices=list(TORCH_PEERS))
    parser.add_argument("--rounds", type=int, default=15)
    add_output_options(parser, "benchmarks/results.json", "performance")
    args = parser.parse_args(argv)
    partial = args.workloads != list(WORKLOADS) or args.rules != list(BENCHMARKED)
    return report(args, lambda: run(args.workloads, args.rules, args.rounds), table, "performance", partial=partial)


if __name__ == "__main__":
    sys.exit(main())
