"""The record CLI's front door (`python -m actors.consumer`, `tracebus record`):
one parser, consumer_cli's flags and the detached modes', then the mode:

    --detach / --attach / --is_detached    actors/cli_detach.py
    --clone / --clone-by-name              actors/cli_clone.py (via consumer_cli.run)
    -c CONFIG -o OUT                       a recording: actors/consumer_cli.py
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from actors import cli_detach, consumer_cli


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(format="tracebus: %(message)s", level=logging.WARNING)
    parser = consumer_cli._parser()
    cli_detach.add_arguments(parser)
    args = parser.parse_args(argv)
    if cli_detach.wanted(args):
        return cli_detach.detached_mode(parser, args)
    return consumer_cli.run(parser, args)
