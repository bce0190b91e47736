"""``python -m portopt``: the same command as ``portopt``."""

import sys

from portopt.cli import main

sys.exit(main())
