"""The ``crossent`` command: one module per subcommand, each with ``add_parser`` and ``run``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from rich.console import Console

import crossent
from crossent.cli import compress, decompress, explain, predict, score, train

_COMMANDS = (explain, train, predict, score, compress, decompress)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossent",
        description="Cross entropy and log-likelihood, in bits: measures, explanations, models.",
    )
    parser.add_argument("--version", action="version", version=f"crossent {crossent.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in _COMMANDS:
        command.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``crossent``; bad input ends with a one-line error on stderr and exit status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args, Console(highlight=False))
    except (ValueError, TypeError) as error:
        print(f"crossent {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
