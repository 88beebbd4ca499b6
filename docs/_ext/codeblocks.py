"""The info-string convention of the code blocks in README.md and docs/*.md, in one place:
read by the docs build (runblocks.py) and by the test that runs the blocks
(tests/test_doc_examples.py). It imports nothing outside the standard library.

A fenced block names its language first: ``python`` and ``shell`` blocks run (``python`` ones in
the build and the test, ``shell`` ones in the test), ``text`` is output or a layout and never
runs. After an executable language the info string may say ``not-run: REASON``: the block is
shown and not run, and REASON (not empty) says why.
"""

from __future__ import annotations

RUN = ("python", "shell")  # the languages whose blocks run
SHOWN = ("text",)  # output, layouts, patterns: nothing to run
NOT_RUN = "not-run:"


def run_reason(arguments: str) -> str | None:
    """None if a block with these info-string arguments runs, else why it does not.

    >>> run_reason("") is None
    True
    >>> run_reason("not-run: needs a CUDA GPU")
    'needs a CUDA GPU'
    """
    arguments = arguments.strip()
    if not arguments:
        return None
    if not arguments.startswith(NOT_RUN) or not arguments[len(NOT_RUN) :].strip():
        raise ValueError(
            f"a code block's info string may add only '{NOT_RUN} REASON' to its language, "
            f"with a reason; got {arguments!r}"
        )
    return arguments[len(NOT_RUN) :].strip()
