"""``python -m benchmarks.gpu``: one optimizer step on a GPU, portopt against torch's fused and
foreach CUDA steps and the bytes-moved bound, in one interleaved run (scripts/gpu-check runs it).

Workloads: 1e8 float32 parameters (one tensor), the ResNet-50 tree (161 tensors), 1,000 tiny
tensors (launch overhead), and 1e8 float16 parameters. portopt steps CuPy arrays and torch CUDA
tensors (both through the generated table kernel: one launch per group); torch steps
``torch.optim`` with ``fused=True`` and ``foreach=True``. The bound is the bytes a step moves
divided by the device-to-device copy bandwidth measured in the same run (read + write counted).
Times are CUDA-event medians after warm-up steps. Not yet run: no GPU was at hand when written.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable
from typing import Any

import portopt

from .__main__ import BENCHMARKED, TORCH_PEERS, bytes_per_step
from .report import add_output_options, report
from .workloads import resnet50_shapes

WORKLOADS: dict[str, tuple[list[tuple[int, ...]], str]] = {
    "1e8 float32": ([(100_000_000,)], "float32"),
    "resnet50 float32": (resnet50_shapes(), "float32"),
    "1000 tiny float32": ([(16,)] * 1000, "float32"),
    "1e8 float16": ([(100_000_000,)], "float16"),
}


def _time(torch: Any, step: Callable[[], None], repeats: int, warm: int = 3) -> float:
    """Median seconds per step, by CUDA events on torch's current stream (which portopt's
    launches for torch tensors share; CuPy's are synchronised before each sample)."""
    for _ in range(warm):
        step()
    torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        stop.record()
        stop.synchronize()
        samples.append(start.elapsed_time(stop) / 1e3)
    return statistics.median(samples)


def copy_bandwidth(torch: Any, nbytes: int = 2_000_000_000) -> float:
    """Device-to-device copy, bytes read plus bytes written per second."""
    a = torch.empty(nbytes // 4, dtype=torch.float32, device="cuda")
    b = torch.empty_like(a)
    seconds = _time(torch, lambda: b.copy_(a), 10)
    return 2 * a.numel() * 4 / seconds


def implementations(torch: Any, cupy: Any, rule_name: str, shapes: list, dtype: str) -> dict[str, Callable[[], None]]:
    """name -> one step, each on its own copy of the workload."""
    made: dict[str, Callable[[], None]] = {}
    torch_dtype = getattr(torch, dtype)

    def portopt_on(make: Callable[[tuple], Any], label: str, synchronise: Callable[[], None]) -> None:
        rule = portopt.RULES[rule_name]()
        params = [make(shape) for shape in shapes]
        grads = [make(shape) for shape in shapes]
        state = rule.init(params)

        def step() -> None:
            rule.step(params, grads, state)
            synchronise()
        made[label] = step

    portopt_on(lambda shape: torch.full(shape, 0.5, dtype=torch_dtype, device="cuda"), "portopt torch-cuda",
               lambda: None)
    if cupy is not None:
        portopt_on(lambda shape: cupy.full(shape, 0.5, dtype=dtype), "portopt cupy",
                   lambda: cupy.cuda.get_current_stream().synchronize())
    peer, options = TORCH_PEERS[rule_name]
    for mode in ("fused", "foreach"):
        params = [torch.nn.Parameter(torch.full(shape, 0.5, dtype=torch_dtype, device="cuda")) for shape in shapes]
        for p in params:
            p.grad = torch.full_like(p, 0.25)
        try:
            optimizer = getattr(torch.optim, peer)(params, **options, **{mode: True})
        except (RuntimeError, TypeError, ValueError) as error:  # a mode torch lacks for this rule
            print(f"  torch {mode} {peer}: {error}", file=sys.stderr)
            continue
        made[f"torch {mode}"] = optimizer.step
    return made


def run(workloads: list[str], rules: list[str], repeats: int) -> dict:
    import torch

    try:
        import cupy
    except ImportError:
        cupy = None
    results: dict[str, Any] = {"gpu": torch.cuda.get_device_name(0), "torch": torch.__version__,
                               "cupy": getattr(cupy, "__version__", None), "rows": []}
    results["copy_bandwidth"] = bandwidth = copy_bandwidth(torch)
    for workload in workloads:
        shapes, dtype = WORKLOADS[workload]
        for rule_name in rules:
            moved = bytes_per_step(portopt.RULES[rule_name](), [_size(s) for s in shapes], dtype)
            bound = moved / bandwidth
            timings = {}
            for name, step in implementations(torch, cupy, rule_name, shapes, dtype).items():
                try:
                    timings[name] = _time(torch, step, repeats)
                except Exception as error:  # noqa: BLE001 - a row that fails is reported, the run goes on
                    print(f"  {workload} {rule_name} {name}: {type(error).__name__}: {error}", file=sys.stderr)
                torch.cuda.empty_cache()
            fused = timings.get("torch fused")
            for name, seconds in timings.items():
                results["rows"].append({"workload": workload, "rule": rule_name, "implementation": name,
                                        "ms": seconds * 1e3, "x_bound": seconds / bound,
                                        "x_torch_fused": seconds / fused if fused else None})
            print(f"  done: {workload} {rule_name}", file=sys.stderr)
    return results


def _size(shape: tuple[int, ...]) -> int:
    size = 1
    for n in shape:
        size *= n
    return size


def table(results: dict) -> str:
    lines = [f"{results['gpu']}; torch {results['torch']}, CuPy {results['cupy']}; device-to-device copy "
             f"{results['copy_bandwidth'] / 1e12:.2f} TB/s (read + write), the bound's basis.", "",
             "| workload | rule | implementation | ms/step | × bound | × torch fused |", "|---|---|---|---|---|---|"]
    for row in results["rows"]:
        fused = f"{row['x_torch_fused']:.2f}" if row["x_torch_fused"] else "—"
        lines.append(f"| {row['workload']} | {row['rule']} | {row['implementation']} | {row['ms']:.3f} | "
                     f"{row['x_bound']:.2f} | {fused} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--rules", nargs="+", default=list(BENCHMARKED), choices=list(BENCHMARKED))
    parser.add_argument("--repeats", type=int, default=20)
    add_output_options(parser, "benchmarks/gpu.json", "gpu")
    args = parser.parse_args(argv)
    partial = args.workloads != list(WORKLOADS) or args.rules != list(BENCHMARKED)
    return report(args, lambda: run(args.workloads, args.rules, args.repeats), table, "gpu", partial=partial)


if __name__ == "__main__":
    raise SystemExit(main())
