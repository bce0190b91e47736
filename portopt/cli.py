"""The ``portopt`` command (also ``python -m portopt``): ``portopt conformance ...``,
``portopt peers ...``, ``portopt demo``, ``portopt --version``."""

from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: portopt COMMAND [options]   (or: python -m portopt COMMAND ...)

commands:
  conformance   check that every backend found reproduces the golden vectors bit for bit
  distributed   check that FSDP2 and ZeRO training on local ranks gives one process's bits
  peers         compare portopt with torch.optim's own paths (a report, not a pass/fail)
  demo          a short optimisation on every backend found, with the digests of the result

'portopt COMMAND --help' for a command's options; 'portopt --version' for the version."""


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from portopt import __version__

        print(f"portopt {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command == "conformance":
        from portopt.conformance.cli import main as conformance_main

        return conformance_main(rest)
    if command == "distributed":
        from portopt.conformance.distributed import main as distributed_main

        return distributed_main(rest)
    if command == "peers":
        from portopt.conformance.peers import main as peers_main

        return peers_main(rest)
    if command == "demo":
        from portopt.demo import main as demo_main

        return demo_main(rest)
    print(f"portopt: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
