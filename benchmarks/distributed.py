"""``python -m benchmarks.distributed``: the optimizer step under FSDP2 on 1 and 2 local ranks.

A model of ``--params`` float32 parameters (square bias-free Linear layers) is sharded with
``fully_shard`` over 1 and then 2 gloo ranks on this machine, each rank on ``--threads``
cores. Per rank: the median time of ``portopt.torch.Adam.step()`` (and of
``torch.optim.Adam(foreach=True)`` on the same shards, for scale), the bytes it holds in
parameters, gradients and optimizer state (counted from the tensors), and the process's
peak resident memory. The step does no communication, so per-rank cost should follow the
shard: the table adds what 16 bytes per parameter (4 param + 4 grad + 8 Adam state) predict
for 8 ranks. ``--readme docs/performance.md`` rewrites its scaling block.
"""

from __future__ import annotations

import argparse
import statistics
import time

from .report import add_output_options, report

WIDTH = 1024
BYTES_PER_PARAMETER = 16  # float32 param + grad + exp_avg + exp_avg_sq


def measure(rank: int, ranks: int, params: int, steps: int, threads: int) -> dict:
    """Runs on every rank (see portopt.conformance.ranks)."""
    import resource

    import torch.distributed as dist
    from torch.distributed.fsdp import fully_shard

    import portopt.torch as pt
    import torch
    from portopt import torch_sharding

    try:
        import numba

        numba.set_num_threads(threads)
    except ImportError:
        pass
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    layers = [torch.nn.Linear(WIDTH, WIDTH, bias=False) for _ in range(max(1, params // WIDTH**2))]
    model = torch.nn.Sequential(*layers)
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    model(torch.randn(4, WIDTH)).square().mean().backward()

    def held(tensors) -> int:
        return sum(torch_sharding.local(t).numel() * t.element_size() for t in tensors)

    results = {"rank": rank, "ranks": ranks, "threads": threads,
               "params": sum(p.numel() for p in model.parameters())}
    for name, optimizer in (("portopt", pt.Adam(model.parameters(), lr=1e-3)),
                            ("torch-foreach", torch.optim.Adam(model.parameters(), lr=1e-3, foreach=True))):
        optimizer.step()  # state and compiled loops exist from here on
        times = []
        for _ in range(steps):
            dist.barrier()
            began = time.perf_counter()
            optimizer.step()
            times.append(time.perf_counter() - began)
        results[f"{name}_step_ms"] = 1e3 * statistics.median(times)
        if name == "portopt":
            state = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
            results["bytes"] = {"params": held(model.parameters()),
                                "grads": held(p.grad for p in model.parameters()), "state": held(state)}
        del optimizer
    results["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return results


def run(params: int, steps: int, threads: int) -> dict:
    from portopt.conformance.ranks import run_ranks
    from portopt.conformance.report import machine_description

    return {"machine": machine_description(), "params": params, "steps": steps,
            "runs": {ranks: run_ranks(measure, ranks, params, steps, threads, timeout=600, threads=threads)
                     for ranks in (1, 2)}}


def table(results: dict) -> str:
    runs = {int(k): v for k, v in results["runs"].items()}
    params = runs[1][0]["params"]
    one = runs[1][0]
    lines = [
        f"Adam step under FSDP2 (`fully_shard`), {params / 1e6:.1f} M float32 parameters, gloo on loopback, "
        f"each rank on {one['threads']} core(s); median of {results['steps']} steps; {results['machine']}.",
        "",
        "| ranks | per rank: params + grads + state | peak RSS | portopt.torch.Adam step | "
        "torch.optim.Adam (foreach) step |",
        "|---|---|---|---|---|",
    ]
    for ranks, per_rank in sorted(runs.items()):
        for r in per_rank:
            held = sum(r["bytes"].values())
            lines.append(f"| {ranks} (rank {r['rank']}) | {held / 2**20:.0f} MiB "
                         f"({held / params:.1f} B/param of the model) | {r['peak_rss_mib']:.0f} MiB | "
                         f"{r['portopt_step_ms']:.1f} ms | {r['torch-foreach_step_ms']:.1f} ms |")
    predicted = BYTES_PER_PARAMETER * params / 8
    lines.append(f"| 8 (predicted) | {predicted / 2**20:.0f} MiB ({BYTES_PER_PARAMETER / 8:.1f} B/param) | | "
                 f"~{one['portopt_step_ms'] / 8:.1f} ms (1-rank time / 8) | |")
    lines += ["", "Regenerate: `python -m benchmarks.distributed --readme docs/performance.md`."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", type=int, default=2**24, help="model size (default 2**24)")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1, help="cores per rank (default 1)")
    add_output_options(parser, "benchmarks/distributed.json", "scaling")
    args = parser.parse_args(argv)
    return report(args, lambda: run(args.params, args.steps, args.threads), table, "scaling")


if __name__ == "__main__":
    raise SystemExit(main())
