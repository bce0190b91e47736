"""The benchmark commands' output options: a run of a selection never replaces the full record."""

import argparse
import importlib.util
import json
from pathlib import Path

import pytest

# by its file: the repository root on sys.path would also put the source tree's portopt before the
# installed one that the tests check
_spec = importlib.util.spec_from_file_location("benchmark_report",
                                               Path(__file__).parents[1] / "benchmarks" / "report.py")
assert _spec is not None and _spec.loader is not None
_report = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_report)
add_output_options, report = _report.add_output_options, _report.report


def _run(tmp_path, argv, *, partial):
    default = tmp_path / "results.json"
    default.write_text('{"the": "full record"}\n')
    parser = argparse.ArgumentParser()
    add_output_options(parser, str(default), "performance")
    args = parser.parse_args(argv)
    report(args, lambda: {"rows": [1, 2]}, lambda results: f"table of {len(results['rows'])} rows", "performance",
           partial=partial)
    return json.loads(default.read_text())


def test_a_full_run_writes_the_default_record(tmp_path, capsys):
    assert _run(tmp_path, [], partial=False) == {"rows": [1, 2]}
    assert "table of 2 rows" in capsys.readouterr().out


def test_a_partial_run_leaves_the_record_and_says_so(tmp_path, capsys):
    assert _run(tmp_path, [], partial=True) == {"the": "full record"}
    assert "left as it is" in capsys.readouterr().err


@pytest.mark.parametrize("partial", [False, True])
def test_json_given_is_where_any_run_writes(tmp_path, partial):
    chosen = tmp_path / "mine.json"
    assert _run(tmp_path, ["--json", str(chosen)], partial=partial) == {"the": "full record"}
    assert json.loads(chosen.read_text()) == {"rows": [1, 2]}
