"""Run many golden cases at once: in worker processes, one per core, or in this process.

Cases are handed out in units of one rule variant and dtype (its shapes together), so each
worker compiles the fast-path loops of its own variants, and the slowest units start first.
Every worker builds its own targets from the same names, so what runs there is what the
user asked for; results come back as :class:`CaseResult`, in case order.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from . import golden
from .cases import Case, load_matrix
from .runner import CaseResult, run_case

__all__ = ["TargetSpec", "run_cases", "default_jobs", "Progress"]


@dataclass(frozen=True)
class TargetSpec:
    """How to build the targets again in another process: backend names and namespace modules."""

    backends: tuple[str, ...] | None  # None: every backend found
    namespaces: tuple[str, ...] = ()
    include_backends: bool = True  # False: only the namespaces

    def build(self) -> tuple[dict[str, Any], dict[str, str]]:
        from portopt.conformance.targets import find_targets, namespace_target

        targets, missing = find_targets(self.backends) if self.include_backends else ({}, {})
        for module in self.namespaces:
            target = namespace_target(module)
            targets[target.label] = target
        return targets, missing


def default_jobs() -> int:
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1))


class Progress:
    """A progress line on stderr: redrawn in place on a terminal, else one line every few seconds
    (so a CI log does not look hung)."""

    def __init__(self, total: int, enabled: bool, every: float = 5.0) -> None:
        self.total, self.enabled, self.every = total, enabled, every
        self.interactive = sys.stderr.isatty()
        self.started = self.last = time.perf_counter()
        self.done = 0

    def advance(self, count: int, label: str) -> None:
        self.done += count
        if not self.enabled:
            return
        now = time.perf_counter()
        elapsed = now - self.started
        if self.interactive:
            width = 30
            filled = width * self.done // max(self.total, 1)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                             f"{elapsed:5.0f}s {label[:50]:<50}")
            if self.done >= self.total:
                sys.stderr.write("\n")
        elif now - self.last >= self.every or self.done >= self.total:
            sys.stderr.write(f"conformance: {self.done}/{self.total} cases, {elapsed:.0f}s, last {label}\n")
            self.last = now
        sys.stderr.flush()


# --- worker side ----------------------------------------------------------------------------
_WORKER: dict[str, Any] = {}


def _start_worker(spec: TargetSpec, fast_path: str | None, golden_dir: str) -> None:
    import portopt

    if fast_path is not None:
        portopt.set_fast_path(fast_path)
    _WORKER["targets"] = spec.build()[0]
    _WORKER["golden_dir"] = Path(golden_dir)
    _WORKER["cases"] = load_matrix().cases
    _WORKER["golden"] = {}


def _golden_of(rule: str, directory: Path, cache: dict) -> dict:
    if rule not in cache:
        cache[rule] = golden.load_golden(rule, directory)
    return cache[rule]


def _run_unit(positions: Sequence[int], api: str, record: bool) -> list[tuple[int, dict[str, CaseResult], Any]]:
    """Run the cases at ``positions`` of the matrix in this worker."""
    cases: list[Case] = _WORKER["cases"]
    return _run_positions(cases, positions, _WORKER["targets"], _WORKER["golden_dir"], _WORKER["golden"], api,
                          record)


def _run_positions(cases: list[Case], positions: Iterable[int], targets: dict, golden_dir: Path, cache: dict,
                   api: str, record: bool) -> list[tuple[int, dict[str, CaseResult], Any]]:
    out: list[tuple[int, dict[str, CaseResult], Any]] = []
    with np.errstate(all="ignore"):
        for position in positions:
            case = cases[position]
            expected = None if record else _golden_of(case.rule, golden_dir, cache).get(case.id)
            if expected is None and not record:
                out.append((position, {label: CaseResult(case.id, label, "error",
                                                         "no golden vectors for this case; regenerate")
                                       for label in targets}, None))
                continue
            results, recorded = run_case(case, targets, expected, api=api, record=record)
            out.append((position, results, recorded))
    return out


# --- caller side ----------------------------------------------------------------------------
def _units(cases: list[Case], positions: list[int]) -> list[list[int]]:
    by_key: dict[tuple[str, str, str], list[int]] = {}
    for position in positions:
        case = cases[position]
        by_key.setdefault((case.rule, case.variant, case.dtype), []).append(position)
    return list(by_key.values())


def run_cases(selected: list[Case], spec: TargetSpec, targets: dict[str, Any], *, api: str = "step",
              record: bool = False, fast_path: str | None = None, golden_dir: Path = golden.GOLDEN_DIR,
              jobs: int = 1, on_done: Callable[[int, str], None] | None = None
              ) -> list[tuple[Case, dict[str, CaseResult], Any]]:
    """Run ``selected`` (cases of the standard matrix) on the targets of ``spec``; returns
    ``(case, results by target, recorded golden entry or None)`` in the order given.

    ``jobs > 1`` runs them in that many worker processes (spawned: nothing of this process's
    state is shared); ``targets`` are this process's, used when ``jobs == 1``.
    """
    cases = load_matrix().cases
    index = {case.id: position for position, case in enumerate(cases)}
    positions = []
    for case in selected:
        if case.id not in index or cases[index[case.id]] != case:
            raise ValueError(f"{case.id} is not a case of the standard matrix")
        positions.append(index[case.id])
    units = _units(cases, positions)
    found: dict[int, tuple[dict[str, CaseResult], Any]] = {}
    if jobs <= 1 or len(units) <= 1:
        cache: dict = {}
        for unit in units:
            for position, results, recorded in _run_positions(cases, unit, targets, Path(golden_dir), cache, api,
                                                              record):
                found[position] = (results, recorded)
            if on_done:
                on_done(len(unit), cases[unit[-1]].id)
    else:
        context = get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(jobs, len(units)), mp_context=context, initializer=_start_worker,
                                 initargs=(spec, fast_path, str(golden_dir))) as pool:
            futures = {pool.submit(_run_unit, unit, api, record): unit for unit in units}
            from concurrent.futures import as_completed

            for future in as_completed(futures):
                unit = futures[future]
                for position, results, recorded in future.result():
                    found[position] = (results, recorded)
                if on_done:
                    on_done(len(unit), cases[unit[-1]].id)
    return [(cases[position], *found[position]) for position in positions]
