"""``-`` as a path: standard input or standard output, where a stream makes sense.

- An **input** ``-`` (``score -``, ``predict RUN -``) is read as CSV. It is first copied to a
  temporary file (in ``$TMPDIR``, removed at the end): a bad value's error message reads the
  rows again to name the row and column, and a pipe cannot be read twice. Messages call it
  ``'-' (standard input)``, never by the temporary's name.
- An **output** ``-`` (``predict … -o -``, ``decompress … -o -``, ``score --json -``, ``--json -``
  of every command that reports numbers, ``compress … -o -``) is written to a temporary file
  first and copied to standard output only when the command has succeeded: an error leaves
  nothing on standard output, as it leaves nothing at an output path (docs/failure-modes.md).
  Tables go out as CSV. What the command would print for a person then goes to standard
  error, so standard output carries the data alone.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

STDIO = "-"
STDIN_NAME = "'-' (standard input)"


def is_stdio(path: str | os.PathLike[str] | None) -> bool:
    """Whether ``path`` is ``-``: standard input or output, not a file of that name.

    >>> is_stdio("-"), is_stdio("./-"), is_stdio(None)
    (True, False, False)
    """
    return path is not None and os.fspath(path) == STDIO


def takes_stdout(args: Any, options: tuple[str, ...] = ("output", "json")) -> bool:
    """Whether one of the command's output ``options`` is ``-``: its data goes to stdout."""
    return any(is_stdio(getattr(args, name, None)) for name in options)


def check_one_stdout(args: Any, options: tuple[str, ...] = ("output", "json")) -> None:
    """At most one output may be ``-``: standard output carries one stream."""
    given = [name for name in options if is_stdio(getattr(args, name, None))]
    if len(given) > 1:
        named = " and ".join(f"--{name}" for name in given)
        raise ValueError(f"{named} are both - (standard output); give one of them a file")


@contextlib.contextmanager
def readable(path: Path, suffix: str = ".csv") -> Iterator[Path]:
    """``path`` itself, or for ``-`` a temporary file holding standard input (``suffix`` says
    its kind); errors that name the temporary name standard input instead."""
    if not is_stdio(path):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="crossent-stdin-") as folder:
        copy = Path(folder) / f"stdin{suffix}"
        with copy.open("wb") as file:
            shutil.copyfileobj(sys.stdin.buffer, file, 1 << 20)
        try:
            yield copy
        except (ValueError, OSError) as error:
            raise _renamed(error, copy) from None


@contextlib.contextmanager
def to_stdout(suffix: str) -> Iterator[Path]:
    """A temporary file to write an output into, copied to standard output when the block ends
    without an error: standard output gets the whole output or nothing."""
    with tempfile.TemporaryDirectory(prefix="crossent-stdout-") as folder:
        temporary = Path(folder) / f"output{suffix}"
        yield temporary
        sys.stdout.flush()
        with temporary.open("rb") as file:
            shutil.copyfileobj(file, sys.stdout.buffer, 1 << 20)
        sys.stdout.buffer.flush()


def _renamed(error: ValueError | OSError, copy: Path) -> ValueError | OSError:
    """The same error, with the temporary copy called standard input in its message."""
    message = str(error).replace(repr(str(copy)), STDIN_NAME).replace(str(copy), STDIN_NAME)
    if isinstance(error, ValueError):
        return ValueError(message)
    return OSError(error.errno, message)
