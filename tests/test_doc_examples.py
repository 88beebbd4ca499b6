"""Every code block of README.md and docs/ runs as written, or says why not.

The convention (docs/contributing.md, written once in docs/_ext/codeblocks.py): a fence's first
word is its language; ``python`` and ``shell`` blocks run, ``text`` blocks are shown only, and
``LANGUAGE not-run: REASON`` is shown and not run. The blocks of one file run in order in a
scratch folder of their own: the ``python`` blocks in one namespace in a fresh interpreter,
the ``shell`` blocks with bash, ``-e`` and ``pipefail``, with this interpreter's ``crossent`` and
``python`` first on ``PATH``. A block that fails, or a Python block that warns, fails here with
the file and the line of the block.

The default run checks every block's info string and runs README.md's Python blocks (README
is not a page of the site). The rest take minutes — every ``crossent`` command starts torch,
several train a model — and are marked slow: ``make docs``, which CI runs, runs them after
building the site (whose build has run the pages' Python blocks once already).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from markdown_it import MarkdownIt

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "docs" / "_ext"))
from codeblocks import RUN, SHOWN, run_reason  # noqa: E402 (docs/_ext is not a package)

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
PAGES = [page for page in PAGES if "_build" not in page.parts]

# Runs every block of a file in one namespace; the blocks come as JSON on stdin.
RUNNER = """
import json, sys, traceback, warnings
namespace = {"__name__": "__main__"}
for block in json.load(sys.stdin):
    where = f"{block['file']}, the block at line {block['line']}"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            exec(compile(block["code"], where, "exec"), namespace)
    except BaseException:
        print(f"\\n{where} failed:", file=sys.stderr)
        traceback.print_exc()
        sys.exit(1)
"""


@dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence, 1-based
    language: str
    arguments: str
    code: str

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, as a Markdown parser reads them."""
    found = []
    for token in MarkdownIt("commonmark").parse(page.read_text()):
        if token.type == "fence":
            language, _, arguments = token.info.strip().partition(" ")
            assert token.map is not None
            found.append(Block(page, token.map[0] + 1, language, arguments, token.content))
    return found


def runnable(language: str) -> dict[Path, list[Block]]:
    """The blocks of ``language`` that run, by page (pages without one left out)."""
    by_page = {
        page: [b for b in blocks(page) if b.language == language and not run_reason(b.arguments)]
        for page in PAGES
    }
    return {page: found for page, found in by_page.items() if found}


def page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def pages_of(language: str, *, quick: tuple[str, ...] = ()) -> list[object]:
    """The pages with runnable blocks of ``language``; all slow but those named in ``quick``."""
    return [
        pytest.param(page, id=page_id(page), marks=() if page_id(page) in quick else SLOW)
        for page in runnable(language)
    ]


SLOW = (pytest.mark.slow,)


def test_every_block_says_what_it_is() -> None:
    wrong = []
    for page in PAGES:
        for block in blocks(page):
            if block.language.startswith("{") and block.language.endswith("}"):
                continue  # a MyST directive: {toctree}, {eval-rst}
            if block.language in SHOWN and not block.arguments:
                continue
            if block.language not in RUN:
                wrong.append(f"{block.name}: language {block.language or 'none'!r}")
                continue
            try:
                run_reason(block.arguments)
            except ValueError as error:
                wrong.append(f"{block.name}: {error}")
    assert not wrong, "code blocks must follow docs/contributing.md:\n" + "\n".join(wrong)


@pytest.mark.parametrize("page", pages_of("python", quick=("README.md",)))
def test_python_blocks_run(page: Path, tmp_path: Path) -> None:
    payload = [
        {"file": page_id(page), "line": b.line, "code": b.code} for b in runnable("python")[page]
    ]
    done = subprocess.run(
        [sys.executable, "-c", RUNNER],
        input=json.dumps(payload),
        cwd=tmp_path,
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-4000:]


@pytest.mark.parametrize("page", pages_of("shell"))
def test_shell_blocks_run(page: Path, tmp_path: Path) -> None:
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    for block in runnable("shell")[page]:
        done = subprocess.run(
            [bash, "-e", "-o", "pipefail", "-c", block.code],
            cwd=tmp_path,
            env=_environment(),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"{block.name} failed:\n{done.stdout[-2000:]}{done.stderr}"


def _environment() -> dict[str, str]:
    """This interpreter's scripts (crossent, python) first on PATH; no colours, 100 columns."""
    scripts = str(Path(sys.executable).parent)
    return {
        **os.environ,
        "PATH": scripts + os.pathsep + os.environ.get("PATH", ""),
        "COLUMNS": "100",
        "NO_COLOR": "1",
    }


def test_blocks_are_found_with_their_language_and_reason(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "# t\n\n```python\nx = 1\n```\n\n- a list\n\n  ```shell not-run: needs a GPU\n"
        "  nvidia-smi\n  ```\n\n```text\nout\n```\n"
    )
    found = [(b.line, b.language, run_reason(b.arguments), b.code) for b in blocks(page)]
    assert found == [
        (3, "python", None, "x = 1\n"),
        (9, "shell", "needs a GPU", "nvidia-smi\n"),
        (13, "text", None, "out\n"),
    ]
