"""``portopt peers``: how far apart portopt and torch.optim's own paths land (a report, not a test).

For each rule (torch defaults), the same parameters and gradients go through portopt
(NumPy) and torch.optim's single-tensor (``foreach=False``), multi-tensor (``foreach=True``)
and fused (``fused=True``, where torch has it on the CPU) paths. After 1, 100 and 1000
steps the largest ulp distance and relative difference between each pair is reported.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections.abc import Sequence

import numpy as np

import portopt

from .digests import ulp_distance
from .report import machine_description, replace_block

STEPS_REPORTED = (1, 100, 1000)

# portopt rule -> (torch.optim class name, extra options), from the rules' registry entries
TORCH_PEERS = {name: (rule.torch_peer.name, dict(rule.torch_peer.options))
               for name, rule in portopt.RULES.items() if rule.torch_peer is not None}
# the rules the report shows by default (every peer: --rules)
DEFAULT_RULES = ("Adam", "AdamW", "AMSGrad", "AdaGrad", "RMSProp")


def _torch_paths(torch, rule: str, param):
    name, extra = TORCH_PEERS[rule]
    cls = getattr(torch.optim, name)
    paths = {}
    for label, options in (("single", {"foreach": False}), ("foreach", {"foreach": True}), ("fused", {"fused": True})):
        tensor = param.clone().requires_grad_(True)
        try:
            paths[label] = (tensor, cls([tensor], **options, **extra))
        except (RuntimeError, TypeError, ValueError):
            continue  # no such path for this optimizer on the CPU
    return paths


def _distance(a: np.ndarray, b: np.ndarray) -> tuple[int, float]:
    ulps = ulp_distance(a, b)
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), np.finfo(a.dtype).tiny)
    relative = np.abs(a.astype(np.float64) - b.astype(np.float64)) / scale
    return int(np.max(ulps)), float(np.max(relative))


def compare(rules: Sequence[str], dtypes: Sequence[str], size: int, seed: int = 0) -> list[dict]:
    import torch

    rows = []
    for rule_name, dtype in itertools.product(rules, dtypes):
        rng = np.random.default_rng(seed)
        p0 = rng.standard_normal(size).astype(dtype)
        ours = p0.copy()
        rule = portopt.RULES[rule_name]()
        state = rule.init(ours)
        paths = _torch_paths(torch, rule_name, torch.from_numpy(p0.copy()))
        for step in range(1, max(STEPS_REPORTED) + 1):
            g = rng.standard_normal(size).astype(dtype)
            rule.step(ours, g, state)
            for tensor, optimizer in paths.values():
                tensor.grad = torch.from_numpy(g.copy())
                optimizer.step()
            if step in STEPS_REPORTED:
                results = {"portopt": ours.copy(), **{k: t.detach().numpy().copy() for k, (t, _) in paths.items()}}
                for (a_name, a), (b_name, b) in itertools.combinations(results.items(), 2):
                    ulps, relative = _distance(a, b)
                    rows.append(dict(rule=rule_name, dtype=dtype, step=step, pair=f"{a_name} vs {b_name}",
                                     max_ulp=ulps, max_relative=relative))
    return rows


def markdown(rows: list[dict], size: int) -> str:
    pairs = list(dict.fromkeys(row["pair"] for row in rows))
    cells: dict[tuple, str] = {}
    for row in rows:
        cells[(row["rule"], row["dtype"], row["step"], row["pair"])] = (
            "0" if row["max_ulp"] == 0 else f"{row['max_ulp']} ({row['max_relative']:.1e})"
        )
    import torch

    lines = [
        f"Max ulp distance (max relative difference) of the parameters, {size} elements, torch defaults; "
        f"torch {torch.__version__}, NumPy {np.__version__}, {machine_description()}. "
        "Regenerate: `portopt peers --readme docs/conformance.md`.",
        "",
        "| rule | dtype | step | " + " | ".join(pairs) + " |",
        "|---|---|---|" + "---|" * len(pairs),
    ]
    keys = list(dict.fromkeys((row["rule"], row["dtype"], row["step"]) for row in rows))
    for key in keys:
        lines.append("| " + " | ".join(str(k) for k in key) + " | "
                     + " | ".join(cells.get((*key, pair), "n/a") for pair in pairs) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="portopt peers", description=__doc__.splitlines()[0])
    parser.add_argument("--rules", nargs="+", default=list(DEFAULT_RULES), choices=list(TORCH_PEERS))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--readme", metavar="PATH", help="also write the table into PATH between the peers markers")
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401
    except ImportError:
        print("portopt peers needs torch (pip install 'portopt[torch]')", file=sys.stderr)
        return 2
    with np.errstate(all="ignore"):
        table = markdown(compare(args.rules, args.dtypes, args.size), args.size)
    print(table)
    if args.readme:
        replace_block(args.readme, "peers", table)
    return 0
