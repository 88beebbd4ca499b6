"""What every command that writes shares: ``--force`` in the same words, and the claim of
its output (see :mod:`crossent._files`): refused if it exists, replaced only if crossent
wrote it, written aside and put in place whole."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

from crossent._files import Recognise, claimed

FORCE_HELP = "replace an existing output that crossent wrote (never anything else)"


def add_force(parser: Any) -> None:
    """``--force``, with the same help in every command that writes."""
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)


def claimed_file(
    path: Path, *, force: bool, option: str, recognise: Recognise
) -> contextlib.AbstractContextManager[Path]:
    """Claim the output file ``path``: a context that yields the temporary to write, and
    puts it at ``path`` when the block ends without an error."""
    return claimed(path, folder=False, force=force, option=option, recognise=recognise)
