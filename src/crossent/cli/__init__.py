"""The ``crossent`` command: one module per subcommand, each with ``add_parser`` and ``run``.

Every failure ends with one line on stderr, ``crossent COMMAND: error: ...``, and an exit
status: 2 for the user's mistake (bad input, settings or output path), 1 for the system's (a
full disk, a worker killed, an internal error), 130 on Ctrl-C and 128 + N when stopped by
signal N (SIGTERM, SIGHUP). Never a traceback: set CROSSENT_TRACEBACK=1 to see one anyway.
A command whose extra is not installed (``pip install 'crossent[classifier]'``, ...) is still
listed, and running it says which extra to install, with exit status 2.

Every command takes ``-q/--quiet`` (no progress, no report: only errors). ``-`` as a path is
standard input or output where a stream makes sense (:mod:`crossent.cli._stdio`); a command
whose data goes to standard output prints what it says to a person on standard error.
``crossent --print-completion bash`` prints a completion script (:mod:`crossent.cli._completion`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import importlib
import os
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any, NoReturn

import crossent
from crossent._extras import EXTRAS, absent, optional_module
from crossent._files import OutputError
from crossent.cli import _completion, _stdio

_COMMANDS = ("explain", "train", "predict", "score", "compress", "decompress", "text")
_EXTRA = {
    "train": "classifier",
    "predict": "classifier",
    "score": "classifier",
    "compress": "compress",
    "decompress": "compress",
    "text score": "text",
    "text compress": "text",
    "text decompress": "text",
    "text train": "text",
}
"""The extra that installs everything a command needs, where the core install does not."""
_INCLUDES = {"compress": ("classifier",)}  # pip install 'crossent[compress]' brings [classifier]
_USERS_CHOICE = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EISDIR, errno.ENOTDIR}
_STOPPING = ("SIGTERM", "SIGHUP")  # signals that stop a command cleanly (no SIGHUP on Windows)


class Stopped(BaseException):
    """The command was asked to stop by a signal (SIGTERM, SIGHUP): unwinds like Ctrl-C, so
    temporary outputs are removed and worker processes stopped on the way out."""

    def __init__(self, number: int) -> None:
        super().__init__(signal.Signals(number).name)
        self.number = number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="crossent",
        description="Cross entropy and log-likelihood, in bits: measures, explanations, models.",
    )
    parser.add_argument("--version", action="version", version=f"crossent {crossent.__version__}")
    _completion.add_to(parser)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        _add_command(commands, name)
        _add_quiet(commands.choices[name])
    return parser


def _add_quiet(parser: argparse.ArgumentParser) -> None:
    """``-q/--quiet``, the same in every command (not in one whose extra is missing); a
    command with subcommands (``text``) gets it in each of them, where argparse keeps it."""
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for group in groups:
        for command in group.choices.values():
            _add_quiet(command)
    if parser.prefix_chars == "-" and not groups:
        parser.add_argument(
            "-q",
            "--quiet",
            action="store_true",
            help="print nothing but errors: no progress, no report",
        )


def _add_command(commands: Any, name: str) -> None:
    """The command's parser; where its extra misses an optional dependency, a parser that
    takes any arguments and reports the missing extra when run. The command modules import
    only what their parsers need: a command imports torch, pyarrow and the rest when it runs."""
    try:
        absent = _absent_module(name)
        if absent is not None:
            raise ModuleNotFoundError(f"No module named {absent!r}", name=absent)
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


def _absent_module(command: str) -> str | None:
    """The first optional module that ``command``'s extra installs and this Python lacks,
    found without importing anything (the command modules import them only when they run)."""
    extra = _EXTRA.get(command)
    wanted = (*_INCLUDES.get(extra, ()), extra) if extra else ()
    return next((module for module in map(absent, wanted) if module is not None), None)


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
    """Run ``crossent``; a failure ends with a one-line error on stderr and its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from rich.console import Console

    # data on standard output: what the command says to a person goes to standard error
    console = Console(
        highlight=False,
        quiet=getattr(args, "quiet", False),
        stderr=_stdio.takes_stdout(args),
    )
    try:
        _stdio.check_one_stdout(args)
        with _stop_on_signals():
            args.run(args, console)
    except (Exception, KeyboardInterrupt, Stopped) as error:
        if isinstance(error, BrokenPipeError):
            _silence_stdout()
        missing = (
            _missing_extra(args.command, error) if isinstance(error, ModuleNotFoundError) else None
        )
        message, status = (missing, 2) if missing else explain_failure(error)
        print(f"crossent {args.command}: error: {message}", file=sys.stderr)
        if os.environ.get("CROSSENT_TRACEBACK"):
            traceback.print_exc()
        return status
    return 0


def explain_failure(error: BaseException) -> tuple[str, int]:
    """The one line to print for ``error``, and the exit status."""
    from crossent.torch.distributed.launch import WorkerError

    if isinstance(error, OutputError):
        return str(error), error.status
    if isinstance(error, WorkerError):
        return (error.reason, 2) if error.user_error else (error.summary, 1)
    if isinstance(error, (ValueError, TypeError)):
        return _one_line(error), 2
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", 130
    if isinstance(error, Stopped):
        return f"stopped by {error}", 128 + error.number
    if isinstance(error, MemoryError):
        return "out of memory", 1
    if isinstance(error, BrokenPipeError):
        return "standard output was closed before all of the output was written", 1
    if isinstance(error, OSError):
        return _os_error(error)
    return f"internal error, please report it: {type(error).__name__}: {_one_line(error)}", 1


def _os_error(error: OSError) -> tuple[str, int]:
    reason = error.strerror or _one_line(error)
    where = f": {str(error.filename)!r}" if error.filename is not None else ""
    return f"{reason}{where}", 2 if error.errno in _USERS_CHOICE else 1


def _one_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return " ".join(line.strip() for line in lines) if lines else type(error).__name__


def _silence_stdout() -> None:
    """Point standard output at the null device: its reader is gone, and Python's flush of it
    at exit would otherwise print a second error."""
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[None]:
    """Make SIGTERM and SIGHUP raise :class:`Stopped` for the block, where their default
    would end the process at once, leaving temporary outputs behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    numbers = [getattr(signal, name) for name in _STOPPING if hasattr(signal, name)]
    previous = {number: signal.getsignal(number) for number in numbers}
    for number in numbers:
        if previous[number] == signal.SIG_DFL:
            signal.signal(number, _raise_stopped)
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _raise_stopped(number: int, frame: FrameType | None) -> None:
    raise Stopped(number)


if __name__ == "__main__":
    sys.exit(main())
