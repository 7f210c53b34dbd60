"""`python -m tracebus ...`: the same as the `tracebus` command (tracebus/cli.py)."""

import sys

from tracebus.cli import main

sys.exit(main())
