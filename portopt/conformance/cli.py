"""``portopt conformance``: run the suite on every backend found, or regenerate the vectors."""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

import portopt
from portopt.conformance.targets import (
    CHECKER_NAMES,
    MAIN_JOB_NAMES,
    OPTIONAL_TARGET_NAMES,
    TARGET_NAMES,
    TargetError,
    find_targets,
)

from . import golden
from .cases import load_matrix
from .parallel import Progress, TargetSpec, default_jobs, run_cases
from .report import machine_description, replace_block
from .runner import CaseResult, summarise

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="portopt conformance",
        description="Check that backends reproduce portopt's golden vectors bit for bit.",
    )
    parser.add_argument("action", nargs="?", default="run", choices=("run", "regenerate", "primitives", "list"),
                        help="run the suite (default); regenerate the golden files from NumPy; "
                             "run only the primitive tier; list the cases")
    parser.add_argument("--backends", nargs="+", choices=TARGET_NAMES + OPTIONAL_TARGET_NAMES, metavar="NAME",
                        help=f"backends to run (default: every one found of {', '.join(MAIN_JOB_NAMES)}; "
                             f"{', '.join(CHECKER_NAMES + OPTIONAL_TARGET_NAMES)} only when named)")
    parser.add_argument("--namespace", action="append", default=[], metavar="MODULE",
                        help="run on this array-API namespace, e.g. mylib.array_api (repeatable; without "
                             "--backends, only the namespaces named run)")
    parser.add_argument("--rules", nargs="+", choices=sorted(portopt.RULES), metavar="RULE")
    parser.add_argument("--dtypes", nargs="+", choices=("float16", "float32", "float64", "bfloat16"), metavar="DTYPE")
    parser.add_argument("--shapes", nargs="+", metavar="SHAPE")
    parser.add_argument("--variants", nargs="+", metavar="VARIANT")
    parser.add_argument("--api", choices=("step", "update"), default="step",
                        help="in-place step (default; update where the backend is immutable) or pure update")
    parser.add_argument("--fast-path", choices=("auto", "compiled", "blocked", "off", "shim"), default=None,
                        help="CPU fast path for in-place steps (default: the process's, normally auto)")
    parser.add_argument("--skip-primitives", action="store_true", help="run only the golden-vector tier")
    parser.add_argument("--json", metavar="PATH", help="write every result as JSON to PATH ('-' for stdout)")
    parser.add_argument("--readme", metavar="PATH",
                        help="also write the summary tables into PATH between the conformance markers")
    parser.add_argument("--golden-dir", default=str(golden.GOLDEN_DIR), help=argparse.SUPPRESS)
    parser.add_argument("--accept", action="store_true",
                        help="with regenerate: overwrite golden files whose cases changed (after review)")
    parser.add_argument("--no-progress", action="store_true", help="no progress line on stderr")
    parser.add_argument("--jobs", type=int, default=None, metavar="N",
                        help="worker processes for the golden cases (default: one per core; 1: in this process)")
    return parser


def _spec(args: argparse.Namespace) -> TargetSpec:
    """The backends named (or, without --backends, every one of MAIN_JOB_NAMES found, unless
    namespaces were named: then only those), and the namespaces."""
    return TargetSpec(tuple(args.backends) if args.backends else MAIN_JOB_NAMES, tuple(args.namespace),
                      include_backends=bool(args.backends) or not args.namespace)


def checkers_left_out(args: argparse.Namespace) -> list[str]:
    """The standard's checkers installed here that a run without --backends leaves out."""
    if args.backends or args.namespace:
        return []
    return [name for name in CHECKER_NAMES if importlib.util.find_spec(name) is not None]


def _report_backends(args: argparse.Namespace, missing: dict[str, str], out: Any) -> None:
    """A line for each backend not found, and for each checker left out."""
    for name, reason in missing.items():
        print(f"backend {name}: not found here ({reason})", file=out)
    for name in checkers_left_out(args):
        print(f"{name}: installed, not run by default (the standard's checker: its arithmetic is NumPy's, its "
              f"checks ~15 us an operation); `portopt conformance --backends {name}` runs its cases", file=out)


def _targets(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    return _spec(args).build()


def _choices(matrix: Any) -> str:
    variants = sorted({f"{case.rule}/{case.variant}" for case in matrix.cases})
    shapes = list(dict.fromkeys(case.shape for case in matrix.cases))
    return f"variants: {', '.join(variants)}; shapes: {', '.join(shapes)} (portopt conformance list shows every case)"


def _jobs(args: argparse.Namespace) -> int:
    return args.jobs if args.jobs is not None else default_jobs()


def run_suite(args: argparse.Namespace, out=None) -> int:
    # with --json -, stdout is the JSON document alone: the report goes to stderr
    out = out or (sys.stderr if args.json == "-" else sys.stdout)
    from .primitives import print_primitive_table, run_primitives

    started = time.perf_counter()
    matrix = load_matrix()
    cases = matrix.select(args.rules or (), args.dtypes or (), args.shapes or (), args.variants or ())
    if not cases:
        print(f"portopt conformance: no case matches the selection; {_choices(matrix)}", file=out)
        return 2
    try:
        targets, missing = _targets(args)
    except TargetError as error:
        print(f"portopt conformance: {error}", file=out)
        return 2
    print(f"fast path: {portopt.get_fast_path()}; api: {args.api}", file=out)
    _report_backends(args, missing, out)
    if not targets:
        print("no backend to run", file=out)
        return 2
    primitive_results = []
    if not args.skip_primitives:
        primitive_results = run_primitives(targets, tuple(args.dtypes or ("float16", "float32", "float64", "bfloat16")))
        print_primitive_table(primitive_results, out)
    progress = Progress(len(cases), not args.no_progress)
    ran = run_cases(cases, _spec(args), targets, api=args.api, fast_path=portopt.get_fast_path(),
                    golden_dir=Path(args.golden_dir), jobs=_jobs(args), on_done=progress.advance)
    results: list[CaseResult] = [result for _case, by_target, _ in ran for result in by_target.values()]
    print_case_table(results, out)
    failed = [r for r in results if r.status in ("mismatch", "error")]
    failed_primitives = [r for r in primitive_results if r.failed_on_portopt]
    for result in failed[:20]:
        print(f"MISMATCH {result.target} {result.case}: {result.detail}", file=out)
    if len(failed) > 20:
        print(f"... and {len(failed) - 20} more", file=out)
    if args.json:
        _write_json(args.json, targets, missing, primitive_results, results, checkers_left_out(args))
    if args.readme:
        named = f"--backends {' '.join(args.backends)} " if args.backends else ""
        replace_block(args.readme, "conformance", markdown_summary(targets, missing, primitive_results, results,
                                                                   f"{named}--readme {args.readme}"))
    passed = len([r for r in results if r.status == "pass"])
    known = len([r for r in results if r.status == "known exception"])
    not_applicable = len([r for r in results if r.status == "unsupported"])
    print(f"{passed} passed, {len(failed)} failed ({known} known exceptions, {not_applicable} not applicable; "
          f"primitives failing in portopt's namespace: {len(failed_primitives)}) in "
          f"{time.perf_counter() - started:.0f}s", file=out)
    return 1 if failed or failed_primitives else 0


def print_case_table(results: Sequence[CaseResult], out=None) -> None:
    out = out or sys.stdout
    table = summarise(results)
    print("\nGolden vectors (cases passed / cases run, per backend, rule and dtype)", file=out)
    print(f"{'backend':<18} {'rule':<9} {'dtype':<8} {'result':<12} first mismatch", file=out)
    for (target, rule, dtype), cell in sorted(table.items()):
        if cell["status"] == {"unsupported"}:
            result = "n/a"
        else:
            result = f"{cell['pass']}/{cell['total']}"
        note = cell["first"] or ""
        print(f"{target:<18} {rule:<9} {dtype:<8} {result:<12} {note}", file=out)


def markdown_summary(targets, missing, primitive_results, results, command: str = "--readme docs/conformance.md"
                     ) -> str:
    """The README's conformance section: cases passed per backend, rule and dtype; primitive defects."""
    table = summarise(results)
    dtypes = ("float16", "float32", "float64", "bfloat16")
    lines = [
        f"`portopt conformance {command}` on {machine_description()}, "
        f"portopt {portopt.__version__}, NumPy {np.__version__}"
        + "".join(f", {name}" for name in targets if name != "numpy") + "."
        + (f" Not found there: {', '.join(missing)}." if missing else ""),
        "",
        "| backend | rule | " + " | ".join(dtypes) + " |",
        "|---|---|" + "---|" * len(dtypes),
    ]
    for target, rule in sorted({(t, r) for t, r, _ in table}):
        cells = []
        for dtype in dtypes:
            cell = table.get((target, rule, dtype))
            if cell is None:
                cells.append("")
            elif cell["status"] == {"unsupported"}:
                cells.append(f"n/a (no {dtype})")
            else:
                cells.append(f"{cell['pass']}/{cell['total']}" + ("" if cell["first"] is None else " ✗"))
        lines.append(f"| {target} | {rule} | " + " | ".join(cells) + " |")
    defects = [r for r in primitive_results if r.wrong]
    lines += ["", "Primitive defects found (raw namespace → portopt's namespace, wrong elements of the total):", ""]
    if not defects:
        lines.append("- none")
    by_name: dict[tuple, dict] = {}
    for r in defects:
        by_name.setdefault((r.target, r.operation, r.dtype), {})[r.namespace] = r
    for (target, operation, dtype), found in sorted(by_name.items()):
        raw, ours = found.get("raw"), found.get("portopt")
        total = (raw or ours or found[next(iter(found))]).total
        lines.append(f"- {target} `{operation}` {dtype}: {raw.wrong if raw else 0} → {ours.wrong if ours else 0} "
                     f"of {total}" + (f"; e.g. {raw.example}" if raw else ""))
    return "\n".join(lines)


def _write_json(path: str, targets, missing, primitive_results, results, left_out: Sequence[str] = ()) -> None:
    document = {
        "portopt": portopt.__version__,
        "backends": sorted(targets),
        "missing_backends": missing,
        "not_run_by_default": list(left_out),  # installed checkers a run without --backends leaves out
        "primitives": [r.as_dict() for r in primitive_results],
        "cases": [
            {"case": r.case, "backend": r.target, "status": r.status, "detail": r.detail}
            for r in results
        ],
    }
    text = json.dumps(document, indent=1)
    if path == "-":
        print(text)
    else:
        Path(path).write_text(text + "\n")


def regenerate(args: argparse.Namespace, out=None) -> int:
    """Recompute every golden file from NumPy; refuse to change an existing one without --accept."""
    out = out or sys.stdout
    reference = find_targets(("numpy",))[0]
    matrix = load_matrix()
    directory = Path(args.golden_dir)
    changed_files = []
    rules = sorted({case.rule for case in matrix.cases if not args.rules or case.rule in args.rules})
    selected = [case for case in matrix.cases if case.rule in rules]
    progress = Progress(len(selected), not args.no_progress)
    ran = run_cases(selected, TargetSpec(("numpy",)), reference, api="update", record=True,
                    fast_path=portopt.get_fast_path(), golden_dir=directory, jobs=_jobs(args),
                    on_done=progress.advance)
    for rule in rules:
        computed = {}
        for case, _results, record in ran:
            if case.rule != rule:
                continue
            computed[case.id] = {
                "rule": case.rule, "variant": case.variant, "options": case.options, "dtype": case.dtype,
                "shape": case.shape, "seed": case.seed, "steps": case.steps, **record,
            }
        existing = golden.load_golden(rule, directory)
        if existing == computed:
            print(f"{rule}: unchanged ({len(computed)} cases)", file=out)
            continue
        differing = sorted(k for k in set(existing) | set(computed) if existing.get(k) != computed.get(k))
        if existing and not args.accept:
            print(f"{rule}: {len(differing)} cases would change, e.g. {', '.join(differing[:5])}; "
                  "not written (rerun with --accept after review)", file=out)
            changed_files.append(rule)
            continue
        path = golden.write_golden(rule, computed, directory)
        print(f"{rule}: wrote {path} ({len(differing)} cases new or changed)", file=out)
    return 1 if changed_files else 0


def list_cases(args: argparse.Namespace, out=None) -> int:
    out = out or sys.stdout
    matrix = load_matrix()
    for case in matrix.select(args.rules or (), args.dtypes or (), args.shapes or (), args.variants or ()):
        print(case.id, json.dumps(case.options), file=out)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.fast_path is not None:
        with portopt.fast_path(args.fast_path):
            return _dispatch(args)
    return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    if args.action == "regenerate":
        return regenerate(args)
    if args.action == "list":
        return list_cases(args)
    if args.action == "primitives":
        from .primitives import print_primitive_table, run_primitives

        try:
            targets, missing = _targets(args)
        except TargetError as error:
            print(f"portopt conformance: {error}")
            return 2
        _report_backends(args, missing, sys.stdout)
        results = run_primitives(targets, tuple(args.dtypes or ("float16", "float32", "float64", "bfloat16")))
        print_primitive_table(results)
        return 1 if any(r.failed_on_portopt for r in results) else 0
    return run_suite(args)
