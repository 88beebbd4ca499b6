"""What every command that writes shares: ``--force`` and ``--json`` in the same words, and the
claim of its output (see :mod:`crossent._files`): refused if it exists, replaced only if
crossent wrote it, written aside and put in place whole; or, for ``-``, standard output
(:mod:`crossent.cli._stdio`)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from crossent._files import Recognise, claimed
from crossent.cli._stdio import is_stdio, to_stdout

FORCE_HELP = "replace an existing output that crossent wrote (never anything else)"
JSON_HELP = "also write the numbers of the report as JSON to this file (- for standard output)"


def add_force(parser: Any) -> None:
    """``--force``, with the same help in every command that writes."""
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)


def add_json(parser: Any) -> None:
    """``--json PATH``, with the same help in every command that reports numbers."""
    parser.add_argument("--json", type=Path, metavar="PATH", help=JSON_HELP)


def claimed_file(
    path: Path, *, force: bool, option: str, recognise: Recognise, stdout_suffix: str = ".csv"
) -> contextlib.AbstractContextManager[Path]:
    """Claim the output file ``path``: a context that yields the temporary to write, and
    puts it at ``path`` when the block ends without an error. ``-`` is standard output (a
    temporary copied there at the end, of the kind ``stdout_suffix`` says)."""
    if is_stdio(path):
        return to_stdout(stdout_suffix)
    return claimed(path, folder=False, force=force, option=option, recognise=recognise)


def claimed_json(
    path: Path | None, *, force: bool
) -> contextlib.AbstractContextManager[Path | None]:
    """Claim ``--json``'s file (or standard output), or nothing when it is not given."""
    if path is None:
        return contextlib.nullcontext()
    return claimed_file(
        path, force=force, option="--json", recognise=recognise_json, stdout_suffix=".json"
    )


def write_json(temporary: Path | None, numbers: dict[str, Any]) -> None:
    """Write the report's numbers to ``--json``'s claimed temporary, if there is one."""
    if temporary is not None:
        temporary.write_text(json.dumps(numbers, indent=2) + "\n")


def recognise_json(path: Path) -> str | None:
    """None if ``path`` holds a JSON object, as the reports of crossent's commands do."""
    with path.open("rb") as file:
        start = file.read(4096).lstrip()
    return None if start.startswith(b"{") else "is not a JSON report"
