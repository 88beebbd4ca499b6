"""``crossent --print-completion SHELL``: a completion script for bash, zsh or tcsh, generated
from the parser itself by shtab (``pip install 'crossent[completion]'``), so that it always
knows every command and option. Install it, for bash, with::

    crossent --print-completion bash > ~/.local/share/bash-completion/completions/crossent
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

from crossent._extras import needs

SHELLS = ("bash", "zsh", "tcsh")
_FOLDERS = {"run_folder", "out"}  # arguments that name a folder: complete folders
_FILES = {"data", "predictions", "compressed", "output", "json"}  # ... a file: complete files


class PrintCompletion(argparse.Action):
    """The option that prints the completion script of the whole parser, then exits 0."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kwargs: Any) -> None:
        kwargs.update(default=argparse.SUPPRESS, choices=SHELLS, metavar="SHELL")
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option: Any = None
    ) -> NoReturn:
        try:
            script = completion_script(parser, str(values))
        except ModuleNotFoundError as error:
            parser.exit(2, f"{parser.prog}: error: {error}\n")
        sys.stdout.write(script)
        parser.exit(0)


def add_to(parser: argparse.ArgumentParser) -> None:
    """Give ``parser`` the ``--print-completion SHELL`` option."""
    parser.add_argument(
        "--print-completion",
        action=PrintCompletion,
        help="print a shell completion script for " + ", ".join(SHELLS) + " (needs shtab)",
    )


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of ``parser`` for ``shell``; paths complete as files or folders."""
    with needs("crossent --print-completion", "completion"):
        import shtab
    for action in _actions(parser):
        if action.dest in _FOLDERS:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
        elif action.dest in _FILES:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
    return str(shtab.complete(parser, shell=shell))


def _actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """Every argument of ``parser`` and of its subcommands' parsers."""
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for command in action.choices.values():
                yield from _actions(command)
