"""What every benchmark command does with its results: save or reload JSON, print the table,
and rewrite its README block."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def add_output_options(parser: argparse.ArgumentParser, default_json: str, block: str) -> None:
    parser.add_argument("--json", default=default_json, help=f"where to write the results (default {default_json})")
    parser.add_argument("--readme", metavar="PATH", help=f"rewrite the {block} block of PATH")
    parser.add_argument("--from-json", metavar="PATH", help="print (and --readme) an earlier run's results, no timing")


def report(args: argparse.Namespace, measure: Callable[[], dict], table: Callable[[dict], str], block: str) -> int:
    """Measure (or reload ``--from-json``), write ``--json``, print the table, fill ``--readme``."""
    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
    else:
        results = measure()
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    text = table(results)
    print(text)
    if args.readme:
        from portopt.conformance.report import replace_block

        replace_block(args.readme, block, text)
    return 0
