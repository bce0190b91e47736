"""The ``portopt conformance`` command: backend selection, third-party namespaces, JSON, exit codes."""

from __future__ import annotations

import json

import pytest

from conftest import MISSING, TARGETS
from helpers import break_torch_cpu_sqrt
from portopt.cli import main as portopt_main

SMALL = ["--rules", "AdaGrad", "--variants", "defaults", "--shapes", "one", "prime", "--no-progress", "--jobs", "1"]


@pytest.mark.skipif("array_api_strict" not in TARGETS, reason=f"array_api_strict: {MISSING.get('array_api_strict')}")
def test_namespace_option_runs_the_suite_on_a_given_module(tmp_path, capsys):
    report = tmp_path / "report.json"
    code = portopt_main(["conformance", "--backends", "numpy", "--namespace", "array_api_strict",
                         "--skip-primitives", "--json", str(report), *SMALL])
    out = capsys.readouterr().out
    document = json.loads(report.read_text())
    assert code == 0, out
    assert document["backends"] == ["array_api_strict", "numpy"]
    statuses = {(c["backend"], c["case"].split("/")[2]): c["status"] for c in document["cases"]}
    assert statuses[("array_api_strict", "float32")] == "pass"
    assert statuses[("array_api_strict", "float16")] == "unsupported"  # the standard has no float16
    assert statuses[("numpy", "float16")] == "pass"
    assert "passed, 0 failed" in out


@pytest.mark.skipif("torch-cpu" not in TARGETS, reason=f"torch-cpu: {MISSING.get('torch-cpu')}")
def test_a_broken_primitive_fails_the_run_and_is_named(monkeypatch, capsys):
    break_torch_cpu_sqrt(monkeypatch)
    # The reference path computes with the namespace (fast paths have their own sqrt): --fast-path off.
    code = portopt_main(["conformance", "--backends", "torch-cpu", "--dtypes", "float32", "--fast-path", "off",
                         "--rules", "Adam", "--variants", "defaults", "--shapes", "prime", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1
    assert "defect: torch-cpu [portopt] sqrt float32" in out
    assert "MISMATCH torch-cpu Adam/defaults/float32/prime: first differs at step" in out


def test_unknown_command_and_help():
    assert portopt_main(["frobnicate"]) == 2
    assert portopt_main(["--help"]) == 0
    with pytest.raises(SystemExit):
        portopt_main(["conformance", "--rules", "NoSuchRule"])


@pytest.mark.skipif("torch-cpu" not in TARGETS, reason=f"torch-cpu: {MISSING.get('torch-cpu')}")
def test_a_known_exception_is_reported_with_its_reason_and_not_as_a_pass(monkeypatch, capsys):
    from portopt.conformance import exceptions

    break_torch_cpu_sqrt(monkeypatch)
    reason = "a square root one ulp high, for this test"
    monkeypatch.setattr(exceptions, "_entries", lambda: ({"target": "torch-cpu", "dtype": "float32", "reason": reason},))
    code = portopt_main(["conformance", "--backends", "torch-cpu", "--dtypes", "float32", "--fast-path", "off",
                         "--rules", "Adam", "--variants", "defaults", "--shapes", "prime", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    assert "0 passed, 0 failed (1 known exceptions" in out
    assert f"known exception: {reason}" in out and "(known exception)" in out


def test_worker_processes_give_the_results_of_one_process(capsys):
    """--jobs 2 runs the units in spawned workers that build their own targets."""
    arguments = ["conformance", "--backends", "numpy", "--skip-primitives", "--rules", "SGD", "--shapes", "one",
                 "tree", "--no-progress", "--fast-path", "blocked"]
    assert portopt_main([*arguments, "--jobs", "2"]) == 0
    parallel = capsys.readouterr().out
    assert portopt_main([*arguments, "--jobs", "1"]) == 0
    serial = capsys.readouterr().out
    assert "fast path: blocked" in parallel
    table = [line for line in parallel.splitlines() if line.startswith("numpy ")]
    assert table and table == [line for line in serial.splitlines() if line.startswith("numpy ")]
    assert "0 failed" in parallel


def test_progress_is_a_line_every_few_seconds_when_stderr_is_not_a_terminal(capsys):
    from portopt.conformance.parallel import Progress

    progress = Progress(3, enabled=True, every=0.0)
    for label in ("a", "b", "c"):
        progress.advance(1, label)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [f"conformance: {n}/3 cases, 0s, last {label}" for n, label in zip((1, 2, 3), "abc")]


def test_the_plugin_runs_the_suite_inside_another_projects_pytest(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "portopt.conformance.plugin", "--pyargs", "portopt.conformance.suite",
         "--portopt-backends", "numpy", "-k", "AdaGrad/defaults/float32/one or primitives", "-q", "-p", "no:xdist",
         "-p", "no:cacheprovider"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "2 passed" in result.stdout


@pytest.mark.skipif("array_api_strict" not in TARGETS, reason=f"array_api_strict: {MISSING.get('array_api_strict')}")
def test_the_main_job_leaves_the_standards_checker_to_be_named_and_says_so(tmp_path, capsys):
    """Without --backends every compute backend found runs; array-api-strict (whose arithmetic
    is NumPy's) is left out with a line saying how to run it, and runs when named."""
    report = tmp_path / "report.json"
    one_case = ["--rules", "SGD", "--variants", "plain", "--shapes", "scalar", "--dtypes", "float32",
                "--skip-primitives", "--no-progress", "--jobs", "1"]
    assert portopt_main(["conformance", "--json", str(report), *one_case]) == 0
    out = capsys.readouterr().out
    document = json.loads(report.read_text())
    assert "numpy" in document["backends"] and "array_api_strict" not in document["backends"]
    assert document["not_run_by_default"] == ["array_api_strict"]
    assert "array_api_strict: installed, not run by default" in out
    assert "portopt conformance --backends array_api_strict" in out
    assert portopt_main(["conformance", "--backends", "array_api_strict", "--json", str(report), *one_case]) == 0
    out = capsys.readouterr().out
    assert json.loads(report.read_text())["backends"] == ["array_api_strict"] and "not run by default" not in out
    assert portopt_main(["conformance", "primitives", "--dtypes", "float32"]) == 0
    assert "array_api_strict: installed, not run by default" in capsys.readouterr().out


def test_json_on_stdout_is_the_document_alone(capsys):
    """With ``--json -`` stdout parses as JSON; the report goes to stderr."""
    code = portopt_main(["conformance", "--backends", "numpy", "--json", "-", "--skip-primitives", *SMALL])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    document = json.loads(captured.out)
    assert document["backends"] == ["numpy"] and "passed, 0 failed" in captured.err
