"""Distributed conformance: torch.distributed training with the portopt drop-ins must give
the parameters of the same training on one process, bit for bit.

Every check trains the same small MLP (uneven and empty shards included, one layer big
enough for the threaded fast path) on the same batches on every rank, sharded one way,
and an unsharded copy in the same process, then compares every parameter's bits:

- ``fsdp2``: ``fully_shard`` (DTensor params; each rank steps its shard), every fast path;
- ``zero``: ``ZeroRedundancyOptimizer(optimizer_class=portopt.torch.X)`` under DDP;
- ``fsdp2-checkpoint`` / ``zero-checkpoint``: save mid-run (torch.distributed.checkpoint;
  ZeRO's consolidated state dict), load into a fresh model and optimizer, finish the run;
- ``norm``: :func:`portopt.torch.global_grad_norm` of sharded gradients against
  :func:`portopt.global_norm` of the whole ones, for even, uneven and empty shards.

Variants come from cases.toml (those with a drop-in); a ``clip_norm`` variant clips with
:func:`portopt.torch.clip_grad_norm_` before each step. ``run`` starts the ranks itself
(``portopt.conformance.ranks``: gloo on loopback). Same data on every rank makes the averaged
gradient exactly the one-process gradient (g/2 + g/2 = g for normal numbers).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

CHECKS = ("fsdp2", "zero", "fsdp2-checkpoint", "zero-checkpoint", "norm")
LAYERS = ((12, 300), (300, 450), (450, 7), (7, 1))  # rows 300, 450, 7, 1: even, big, uneven, empty


@dataclass(frozen=True)
class Finding:
    """One comparison on one rank: equal bits, or where they first differ."""

    check: str
    variant: str
    fast_path: str
    rank: int
    equal: bool
    detail: str = ""


# --- the training both sides run ---------------------------------------------------------
def build_model(seed: int, dtype: Any = None) -> Any:
    import torch

    torch.manual_seed(seed)
    layers: list = []
    for index, (fan_in, fan_out) in enumerate(LAYERS):
        layers += [torch.nn.Linear(fan_in, fan_out)] + ([torch.nn.Tanh()] if index < len(LAYERS) - 1 else [])
    return torch.nn.Sequential(*layers).to(dtype or torch.float32)


def batch(step: int, dtype: Any) -> tuple[Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(8, LAYERS[0][0], generator=generator, dtype=torch.float64).to(dtype)
    y = torch.randn(8, LAYERS[-1][1], generator=generator, dtype=torch.float64).to(dtype)
    return x, y


def train(model: Any, optimizer: Any, steps: Iterable[int], clip_norm: float | None) -> None:
    import portopt.torch as pt

    for step in steps:
        x, y = batch(step, next(model.parameters()).dtype)
        optimizer.zero_grad()
        ((model(x) - y) ** 2).mean().backward()
        if clip_norm is not None:
            pt.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()


def drop_in_variants(names: Iterable[str] | None = None) -> list[dict]:
    """cases.toml variants whose rule has a torch drop-in, by ``Rule-name`` or rule name."""
    import portopt.torch as pt

    from .cases import has_torch_equivalent, load_matrix

    variants = [v for v in load_matrix().config["variants"]
                if isinstance(getattr(pt, v["rule"], None), type) and has_torch_equivalent(v)]
    if names is None:
        return variants
    wanted = set(names)
    chosen = [v for v in variants if v["rule"] in wanted or f"{v['rule']}-{v['name']}" in wanted]
    unknown = wanted - {v["rule"] for v in chosen} - {f"{v['rule']}-{v['name']}" for v in chosen}
    if unknown:
        raise ValueError(f"no drop-in variant named {sorted(unknown)}; choose from "
                         f"{sorted({v['rule'] for v in variants})} or Rule-variant names")
    return chosen


def make_optimizer(variant: dict, params: Any) -> Any:
    """The variant's drop-in on ``params``."""
    drop_in, hyperparameters = _drop_in(variant)
    return drop_in(params, **hyperparameters)


def _drop_in(variant: dict) -> tuple[type, dict]:
    import portopt.torch as pt

    from .cases import build_rule

    return getattr(pt, variant["rule"]), build_rule(variant["rule"], variant["options"]).hyperparameters()


def variant_label(variant: dict) -> str:
    return f"{variant['rule']}-{variant['name']}"


def first_difference(sharded: Any, reference: Any) -> str:
    """'' if every parameter has the same bits, else where the first one differs."""
    from portopt import torch_sharding

    for (name, p), q in zip(sharded.named_parameters(), reference.parameters()):
        whole = p.detach().full_tensor() if torch_sharding.is_sharded(p) else p.detach()
        a, b = whole.numpy().reshape(-1), q.detach().numpy().reshape(-1)
        if a.shape != b.shape or a.dtype != b.dtype:
            return f"{name}: {a.dtype}{a.shape} vs one process {b.dtype}{b.shape}"
        differ = np.flatnonzero(a.view(f"u{a.itemsize}") != b.view(f"u{b.itemsize}"))
        if differ.size:
            i = int(differ[0])
            return f"{name}[{i}] (flat): {a[i]!r} vs one process {b[i]!r}; {differ.size} elements differ"
    return ""


def _finding(check: str, variant: dict | str, mode: str, rank: int, detail: str) -> Finding:
    label = variant if isinstance(variant, str) else variant_label(variant)
    return Finding(check, label, mode, rank, not detail, detail)


_REFERENCES: dict[tuple[str, int], Any] = {}


def _reference(variant: dict, steps: int) -> Any:
    """The one-process run: the same model, optimizer and batches, unsharded (once per process)."""
    key = (variant_label(variant), steps)
    if key not in _REFERENCES:
        model = build_model(seed=0)
        train(model, make_optimizer(variant, model.parameters()), range(steps), variant.get("clip_norm"))
        _REFERENCES[key] = model
    return _REFERENCES[key]


# --- the sharded sides ----------------------------------------------------------------------
def _sharded(kind: str, variant: dict, seed: int) -> tuple[Any, Any, Any]:
    """``(model to train, optimizer, module holding the parameters)`` sharded the ``kind`` way."""
    if kind == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        model = build_model(seed)
        for layer in model:
            if hasattr(layer, "weight"):
                fully_shard(layer)
        fully_shard(model)
        return model, make_optimizer(variant, model.parameters()), model
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel

    model = DistributedDataParallel(build_model(seed))
    drop_in, hyperparameters = _drop_in(variant)
    optimizer = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=drop_in, **hyperparameters)
    return model, optimizer, model.module


def check_training(kind: str, rank: int, variant_names: list | None, steps: int, modes: list) -> list[Finding]:
    """``kind`` ("fsdp2" or "zero") training under every fast-path mode against one process."""
    import portopt

    findings = []
    for variant in drop_in_variants(variant_names):
        reference = _reference(variant, steps)
        for mode in modes:
            with portopt.fast_path(mode):
                model, optimizer, module = _sharded(kind, variant, seed=0)
                train(model, optimizer, range(steps), variant.get("clip_norm"))
            findings.append(_finding(kind, variant, mode, rank, first_difference(module, reference)))
    return findings


def check_checkpoint(kind: str, rank: int, variant_names: list | None, steps: int, directory: str
                     ) -> list[Finding]:
    """Save after half the steps, load into a fresh model and optimizer (other initial
    weights), finish the run, compare with one process."""
    findings = []
    half = steps // 2
    for variant in drop_in_variants(variant_names):
        reference = _reference(variant, steps)
        path = f"{directory}/{kind}-{variant_label(variant)}"
        model, optimizer, module = _sharded(kind, variant, seed=0)
        train(model, optimizer, range(half), variant.get("clip_norm"))
        _save(kind, rank, module, optimizer, path)
        del model, optimizer, module
        resumed, optimizer, module = _sharded(kind, variant, seed=1)
        _load(kind, module, optimizer, path)
        train(resumed, optimizer, range(half, steps), variant.get("clip_norm"))
        findings.append(_finding(f"{kind}-checkpoint", variant, "auto", rank, first_difference(module, reference)))
    return findings


def _save(kind: str, rank: int, module: Any, optimizer: Any, path: str) -> None:
    """FSDP2: torch.distributed.checkpoint, every rank its shards. ZeRO: the state
    consolidated on rank 0 and written with torch.save."""
    import torch.distributed as dist

    import torch

    if kind == "fsdp2":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(module, optimizer)
        dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=path)
        return
    optimizer.consolidate_state_dict(to=0)
    if rank == 0:
        torch.save({"model": module.state_dict(), "optimizer": optimizer.state_dict()}, path)
    dist.barrier()


def _load(kind: str, module: Any, optimizer: Any, path: str) -> None:
    import torch

    if kind == "fsdp2":
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

        model_state, optimizer_state = get_state_dict(module, optimizer)
        loaded: dict[str, Any] = {"model": model_state, "optimizer": optimizer_state}
        dcp.load(loaded, checkpoint_id=path)
        set_state_dict(module, optimizer, model_state_dict=loaded["model"], optim_state_dict=loaded["optimizer"])
        return
    saved = torch.load(path, weights_only=False)
    module.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])


NORM_SHAPES = ((6, 5), (7, 3), (3, 2), (1, 4), (0, 3), (1000, 33), (2**12, 8), (9,))


def check_norm(rank: int, ranks: int, seeds: int) -> list[Finding]:
    """Sharded global norms of random gradients (even, uneven, empty and single-row shards,
    float32 and float64, plain and sharded leaves mixed) against the unsharded norm."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    import portopt
    import portopt.torch as pt
    import torch

    mesh = init_device_mesh("cpu", (ranks,))
    findings = []
    for seed in range(seeds):
        for dtype in (torch.float32, torch.float64):
            generator = torch.Generator().manual_seed(seed)
            wholes = [torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype)
                      * 10.0 ** (seed % 7 - 3) for shape in NORM_SHAPES]
            params = []
            for index, whole in enumerate(wholes):
                p = torch.nn.Parameter(distribute_tensor(whole.clone(), mesh, [Shard(0)]) if index % 4 != 3
                                       else whole.clone())
                p.grad = distribute_tensor(whole.clone(), mesh, [Shard(0)]) if index % 4 != 3 else whole.clone()
                params.append(p)
            sharded = pt.global_grad_norm(params).numpy()
            unsharded = np.asarray(portopt.global_norm([w.numpy() for w in wholes]))
            detail = "" if sharded.tobytes() == unsharded.tobytes() else f"{sharded!r} vs one process {unsharded!r}"
            findings.append(_finding("norm", f"seed{seed}", str(dtype).removeprefix("torch."), rank, detail))
    return findings


# --- running them -------------------------------------------------------------------------------
def run(ranks: int = 2, checks: Iterable[str] = CHECKS, variant_names: list | None = None, steps: int = 4,
        modes: Iterable[str] | None = None, timeout: float = 300.0) -> list[Finding]:
    """Every check on ``ranks`` local gloo ranks; the findings of every rank."""
    import portopt
    from portopt.conformance.ranks import run_ranks
    from portopt.fast import MODES
    from portopt.kernels import cpu as compiled

    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise ValueError(f"unknown checks {sorted(unknown)}; choose from {', '.join(CHECKS)}")
    drop_in_variants(variant_names)  # unknown names fail here, not in every rank
    if modes is None:
        modes = [m for m in MODES if m != "compiled" or compiled.available()]
    modes = list(modes)
    for mode in modes:
        with portopt.fast_path(mode):
            pass  # an unknown or unavailable mode fails here, with its reason
    with tempfile.TemporaryDirectory(prefix="portopt-distributed-") as directory:
        per_rank = run_ranks(_run_checks, ranks, list(checks), variant_names, steps, modes, directory,
                             timeout=timeout)
    return [finding for findings in per_rank for finding in findings]


def _run_checks(rank: int, ranks: int, checks: list, variant_names: list | None, steps: int, modes: list,
                directory: str) -> list[Finding]:
    """Every check in one process per rank (numba compiles each kernel once per process)."""
    jobs = {
        "fsdp2": lambda: check_training("fsdp2", rank, variant_names, steps, modes),
        "zero": lambda: check_training("zero", rank, variant_names, steps, modes),
        "fsdp2-checkpoint": lambda: check_checkpoint("fsdp2", rank, variant_names, steps, directory),
        "zero-checkpoint": lambda: check_checkpoint("zero", rank, variant_names, steps, directory),
        "norm": lambda: check_norm(rank, ranks, seeds=3),
    }
    return [finding for check in checks for finding in jobs[check]()]


def summary(findings: list[Finding]) -> str:
    failed = [f for f in findings if not f.equal]
    lines = [f"FAIL {f.check} {f.variant} fast_path={f.fast_path} rank {f.rank}: {f.detail}" for f in failed]
    checks = sorted({f.check for f in findings}, key=CHECKS.index)
    lines.append(f"{len(findings) - len(failed)} passed, {len(failed)} failed ({', '.join(checks)}; "
                 f"{len({f.rank for f in findings})} ranks)")
    return "\n".join(lines)


def as_json(findings: list[Finding]) -> list[dict]:
    return [asdict(f) for f in findings]


def main(argv: list[str] | None = None) -> int:
    """``portopt distributed``: run the checks on local ranks and print the findings."""
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="portopt distributed", description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=2, help="local gloo ranks (default 2)")
    parser.add_argument("--checks", nargs="+", choices=CHECKS, default=list(CHECKS))
    parser.add_argument("--variants", nargs="+", metavar="NAME", help="rule names or Rule-variant names")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--fast-paths", nargs="+", choices=("auto", "compiled", "blocked", "off"),
                        help="fast-path modes for fsdp2 and zero (default: every one available)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before the ranks are killed")
    parser.add_argument("--json", metavar="PATH", help="write every finding to PATH")
    args = parser.parse_args(argv)
    if args.steps < 2:
        parser.error("--steps must be >= 2 (the checkpoint checks save after steps // 2)")
    findings = run(args.ranks, args.checks, args.variants, args.steps, args.fast_paths, args.timeout)
    print(summary(findings))
    if args.json:
        with open(args.json, "w") as file:
            json.dump(as_json(findings), file, indent=1)
    return 0 if all(f.equal for f in findings) else 1
