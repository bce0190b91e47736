"""What every benchmark command does with its results: save or reload JSON, print the table,
and rewrite its README block."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path


def add_output_options(parser: argparse.ArgumentParser, default_json: str, block: str) -> None:
    """``--json``, ``--readme`` and ``--from-json``. A full run writes ``default_json`` unless
    ``--json`` says otherwise; a run of a selection writes JSON only where ``--json`` says, so a
    partial run never replaces the full record."""
    parser.add_argument("--json", default=None,
                        help=f"where to write the results (default: {default_json} for a full run; "
                             "a run of selected workloads or rules writes JSON only when this is given)")
    parser.add_argument("--readme", metavar="PATH", help=f"rewrite the {block} block of PATH")
    parser.add_argument("--from-json", metavar="PATH", help="print (and --readme) an earlier run's results, no timing")
    parser.set_defaults(default_json=default_json)


def report(args: argparse.Namespace, measure: Callable[[], dict], table: Callable[[dict], str], block: str,
           *, partial: bool = False) -> int:
    """Measure (or reload ``--from-json``), write the JSON, print the table, fill ``--readme``.
    ``partial``: the run measured a selection (see :func:`add_output_options`)."""
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
    else:
        results = measure()
        target = args.json or (None if partial else args.default_json)
        if target:
            Path(target).write_text(json.dumps(results, indent=1) + "\n")
        else:
            print(f"a selection was measured: {args.default_json} (the full record) is left as it is; "
                  "--json PATH keeps these results", file=sys.stderr)
    text = table(results)
    print(text)
    if args.readme:
        from portopt.conformance.report import replace_block

        replace_block(args.readme, block, text)
    return 0
