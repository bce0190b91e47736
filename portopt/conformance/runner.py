"""Run cases on targets in lockstep, compare with the golden digests, locate any mismatch.

All targets of a case step together on the same host-generated gradients. At each
checkpoint every target's arrays are digested and compared with the golden file. A
target that differs is replayed, from its last matching checkpoint only, next to the
NumPy reference, one step at a time, to name the first differing step, array and element.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import portopt
from portopt.trees import flatten, unflatten

from .cases import Case, Leaf
from .digests import digest, hex_bits, ulp_distance
from .exceptions import known_exception

__all__ = ["CaseResult", "Mismatch", "run_case", "reference_record"]


@dataclass
class Mismatch:
    """Where a target first left the reference."""

    checkpoint: int
    arrays: list[str]
    step: int | None = None
    array: str | None = None
    index: tuple[int, ...] | None = None
    expected: float | None = None
    got: float | None = None
    expected_hex: str | None = None
    got_hex: str | None = None
    ulps: int | None = None

    def describe(self) -> str:
        if self.step is None:
            return f"digest differs at checkpoint {self.checkpoint}: {', '.join(self.arrays)}"
        return (
            f"first differs at step {self.step}, {self.array}{list(self.index or ())}: expected "
            f"{self.expected!r} (0x{self.expected_hex}), got {self.got!r} (0x{self.got_hex}), "
            f"{self.ulps} ulp"
        )


@dataclass
class CaseResult:
    case: str
    target: str
    status: str  # "pass", "mismatch", "unsupported", "known exception", "error"
    detail: str = ""
    mismatch: Mismatch | None = None
    extra: dict = field(default_factory=dict)


class _Run:
    """One target stepping through one case."""

    def __init__(self, case: Case, target: Any, api: str, bases: list[np.ndarray] | None = None,
                 state: portopt.State | None = None) -> None:
        self.case, self.target = case, target
        self.rule = case.make_rule()
        self.params = case.params_on(target, bases)
        self.state = self.rule.init(self.params) if state is None else _state_on(target, state, self.params)
        self.in_place = api == "step" and target.mutable
        self.update = target.updater(self.rule)

    def step(self, host_grads: list[np.ndarray]) -> None:
        grads = self.case.grads_on(self.target, host_grads)
        if self.in_place:
            self.rule.step(self.params, grads, self.state)
        else:
            self.params, self.state = self.update(self.params, grads, self.state)
        if self.target.settle is not None:  # a lazy backend: persist every step (as a long loop would)
            self.params, self.state.slots = self.target.settle(self.params, self.state.slots)

    def host_arrays(self) -> dict[str, np.ndarray]:
        """Params and every slot, by name (``params['w']``, ``exp_avg['w']``, ...), on the host."""
        paths = self.case.paths
        arrays = {}
        for name, tree in (("params", self.params), *self.state.slots.items()):
            for path, leaf in zip(paths, flatten(tree)[0]):
                arrays[f"{name}{path}"] = self.target.to_numpy(leaf)
        return arrays


def _state_on(target: Any, host_state: portopt.State, params: Any) -> portopt.State:
    """``host_state`` (NumPy slot arrays) moved onto ``target``."""
    treedef = flatten(params)[1]
    slots = {
        name: unflatten(treedef, [target.asarray(x) for x in flatten(tree)[0]])
        for name, tree in host_state.slots.items()
    }
    return portopt.State(rule=host_state.rule, step=host_state.step, slots=slots, host=dict(host_state.host))


def _digests(arrays: dict[str, np.ndarray]) -> dict[str, str]:
    return {name: digest(array) for name, array in arrays.items()}


def reference_record(case: Case, arrays: dict[str, np.ndarray]) -> tuple[dict, dict]:
    """Digests of every array, and raw hex values of the small ones, for the golden file."""
    small = {name: hex_bits(a) for name, a in arrays.items() if a.size <= case.small_values_up_to}
    return _digests(arrays), small


def run_case(case: Case, targets: dict[str, Any], golden: dict | None, api: str = "step",
             record: bool = False) -> tuple[dict[str, CaseResult], dict | None]:
    """Run ``case`` on every target; compare with ``golden`` (a case entry of a golden file).

    With ``record``, also return the golden entry computed by the first target (the
    reference when regenerating).
    """
    results: dict[str, CaseResult] = {}
    runs: dict[str, _Run] = {}
    for label, target in targets.items():
        if case.dtype not in target.dtypes:
            results[label] = CaseResult(case.id, label, "unsupported", f"{label} has no {case.dtype}")
            continue
        runs[label] = _Run(case, target, api)
    if golden is None and not record:
        raise ValueError(f"no golden vectors for {case.id}; run `portopt conformance regenerate`")
    # (step, arrays, host state) at each target's last matching checkpoint
    snapshots = {label: (0, run.host_arrays(), dict(run.state.host)) for label, run in runs.items()}
    recorded: dict[str, dict] | None = {"checkpoints": {}, "values": {}} if record else None
    checkpoints = set(case.checkpoints)
    for step in range(1, case.steps + 1):
        if not runs:
            break
        host_grads = case.host_gradients(step)
        for run in runs.values():
            run.step(host_grads)
        if step not in checkpoints:
            continue
        for label in list(runs):
            arrays = runs[label].host_arrays()
            digests, small = reference_record(case, arrays)
            if record and recorded is not None and label == next(iter(targets)):
                recorded["checkpoints"][str(step)] = digests
                if small:
                    recorded["values"][str(step)] = small
            source = golden if golden else recorded
            assert source is not None
            expected = source["checkpoints"].get(str(step)) if golden else source["checkpoints"][str(step)]
            expected = expected if expected is not None else {}
            different = sorted(name for name in digests if digests[name] != expected.get(name))
            if different or set(digests) != set(expected):
                different = different or sorted(set(digests) ^ set(expected))
                mismatch = Mismatch(checkpoint=step, arrays=different)
                last_step, last_arrays, last_host = snapshots[label]
                if label != "numpy":
                    _locate(case, runs[label].target, api, last_step, last_arrays, last_host, step, mismatch)
                elif golden and str(step) in golden.get("values", {}):
                    _compare_to_values(case, golden["values"][str(step)], arrays, mismatch)
                exception = known_exception(label, case)
                status = "known exception" if exception else "mismatch"
                results[label] = CaseResult(case.id, label, status, exception or mismatch.describe(), mismatch)
                del runs[label]
            else:
                snapshots[label] = (step, arrays, dict(runs[label].state.host))
    for label in runs:
        results[label] = CaseResult(case.id, label, "pass")
    return results, recorded


def _host_state(case: Case, rule: portopt.Rule, arrays: dict[str, np.ndarray], step: int,
                host: dict[str, float]) -> tuple[list, portopt.State]:
    """Base arrays of the params and a host State, from a snapshot of named arrays."""
    paths = case.paths
    bases = [_base_from_view(leaf, arrays[f"params{path}"]) for leaf, path in zip(case.leaves, paths)]
    slots = {
        name: unflatten(case.treedef, [arrays[f"{name}{path}"] for path in paths])
        for name in rule.slot_names()
    }
    return bases, portopt.State(rule=rule.name, step=step, slots=slots, host=dict(host))


def _base_from_view(leaf: Leaf, view: np.ndarray) -> np.ndarray:
    base = np.zeros(leaf.base_shape, dtype=view.dtype)
    if leaf.view == "transpose":
        base[...] = view.T
    elif leaf.view == "every_third":
        base[::3] = view
    else:
        base[...] = view
    return base


def _locate(case: Case, target: Any, api: str, start: int, arrays: dict[str, np.ndarray], host: dict[str, float],
            end: int, mismatch: Mismatch) -> None:
    """Replay steps ``start+1 .. end`` on ``target`` and on NumPy from the matching snapshot."""
    from portopt.conformance.targets import find_targets

    reference = find_targets(("numpy",))[0]["numpy"]
    rule = case.make_rule()
    bases, host_state = _host_state(case, rule, arrays, start, host)
    ours = _Run(case, target, api, bases, host_state)
    theirs = _Run(case, reference, "update", bases, host_state)
    for step in range(start + 1, end + 1):
        host_grads = case.host_gradients(step)
        ours.step(host_grads)
        theirs.step(host_grads)
        got, expected = ours.host_arrays(), theirs.host_arrays()
        for name in expected:
            if _first_difference(name, expected[name], got[name], mismatch):
                mismatch.step = step
                return


def _compare_to_values(case: Case, values: dict[str, list[str]], arrays: dict[str, np.ndarray],
                       mismatch: Mismatch) -> None:
    from .digests import from_hex_bits

    for name, words in values.items():
        expected = from_hex_bits(words, case.dtype if name.startswith("params") else arrays[name].dtype.name,
                                 arrays[name].shape)
        if _first_difference(name, expected, arrays[name], mismatch):
            mismatch.step = mismatch.checkpoint
            return


def _first_difference(name: str, expected: np.ndarray, got: np.ndarray, mismatch: Mismatch) -> bool:
    expected_bits, got_bits = hex_bits(expected), hex_bits(got)
    for flat, (e, g) in enumerate(zip(expected_bits, got_bits)):
        if e != g:
            index = np.unravel_index(flat, expected.shape) if expected.shape else ()
            mismatch.array, mismatch.index = name, tuple(int(i) for i in index)
            mismatch.expected = float(expected.reshape(-1)[flat])
            mismatch.got = float(got.reshape(-1)[flat])
            mismatch.expected_hex, mismatch.got_hex = e, g
            mismatch.ulps = int(ulp_distance(expected.reshape(-1)[flat:flat + 1], got.reshape(-1)[flat:flat + 1])[0])
            return True
    return False


def summarise(results: Iterable[CaseResult]) -> dict[tuple[str, str, str], dict]:
    """Counts per (target, rule, dtype), with the first mismatch of each."""
    table: dict[tuple[str, str, str], dict] = {}
    for result in results:
        rule, _variant, dtype, _shape = result.case.split("/")
        cell = table.setdefault((result.target, rule, dtype), {"pass": 0, "total": 0, "first": None, "status": set()})
        cell["total"] += 1
        cell["status"].add(result.status)
        if result.status == "pass":
            cell["pass"] += 1
        elif cell["first"] is None and result.status != "unsupported":
            cell["first"] = f"{result.case}: {result.detail}"
    return table
