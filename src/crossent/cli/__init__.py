"""The ``crossent`` command: one module per subcommand, each with ``add_parser`` and ``run``.

A command whose extra is not installed (``pip install 'crossent[classifier]'``, ...) is still
listed, and running it says which extra to install, with exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from rich.console import Console

import crossent
from crossent._extras import EXTRAS, optional_module

_COMMANDS = ("explain", "train", "predict", "score", "compress", "decompress")
_EXTRA = {
    "train": "classifier",
    "predict": "classifier",
    "score": "classifier",
    "compress": "compress",
    "decompress": "compress",
}
"""The extra that installs everything a command needs, where the core install does not."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossent",
        description="Cross entropy and log-likelihood, in bits: measures, explanations, models.",
    )
    parser.add_argument("--version", action="version", version=f"crossent {crossent.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        _add_command(commands, name)
    return parser


def _add_command(commands: Any, name: str) -> None:
    """The command's parser; where its module misses an optional dependency, a parser that
    takes any arguments and reports the missing extra when run."""
    try:
        module = importlib.import_module(f"crossent.cli.{name}")
    except ModuleNotFoundError as error:
        missing = optional_module(error)
        if missing is None:
            raise
        parser = commands.add_parser(
            name,
            help=f"(not installed: pip install 'crossent[{_extra(name, missing)}]')",
            add_help=False,
            prefix_chars="\0",  # every argument is taken as it is: the error comes first
        )
        parser.add_argument("arguments", nargs="*")
        parser.set_defaults(run=functools.partial(_reraise, error))
    else:
        module.add_parser(commands)


def _reraise(error: ModuleNotFoundError, *_: Any) -> NoReturn:
    raise error


def _missing_extra(command: str, error: ModuleNotFoundError) -> str | None:
    """What to tell the user where ``error`` is a missing optional dependency, else None."""
    module = optional_module(error)
    if module is None:
        return None
    extra = _extra(command, module)
    return f"needs {module}, which is not installed: pip install 'crossent[{extra}]'"


def _extra(command: str, module: str) -> str:
    """The extra to install for ``command``: its own, else the one of the missing module."""
    return _EXTRA.get(command, EXTRAS[module])


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``crossent``; bad input ends with a one-line error on stderr and exit status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.run(args, Console(highlight=False))
    except (ValueError, TypeError) as error:
        print(f"crossent {args.command}: error: {error}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as error:
        missing = _missing_extra(args.command, error)
        if missing is None:
            raise
        print(f"crossent {args.command}: error: {missing}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
