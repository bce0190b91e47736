"""``python -m portopt.conformance``: the same as ``portopt conformance``."""

import sys

from .cli import main

sys.exit(main())
