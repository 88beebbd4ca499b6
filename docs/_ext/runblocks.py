"""Run the ```` ```python ```` blocks of the docs while the site is built, and show their output.

conf.py makes every ```` ```python ```` fence of a page this extension's ``python`` directive
(``myst_fence_as_directive``). The blocks of one page run in order, in one namespace (as cells
of a notebook), with a fresh temporary folder as the working directory; what a block prints is
shown under it. A block that raises, or warns, fails the build (``make docs`` turns warnings
into errors). The page's numbers are therefore the library's own, computed at build time.

The info string's convention, the same that tests/test_doc_examples.py follows:

- ```` ```python ```` runs;
- ```` ```python not-run: REASON ```` is shown and not run; REASON (not empty) says why, e.g.
  ``not-run: needs a CUDA GPU``.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
import traceback
import warnings
from typing import Any, ClassVar

from codeblocks import run_reason
from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.application import Sphinx
from sphinx.util.docutils import SphinxDirective

_STATE = "runblocks"  # env.temp_data key: the page's namespace and folder; cleared per page


class PythonBlock(SphinxDirective):
    """A Python block: shown highlighted, run in the page's namespace, its output shown under it."""

    has_content = True
    optional_arguments = 1
    final_argument_whitespace = True
    option_spec: ClassVar[dict[str, Any]] = {"name": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        code = "\n".join(self.content)
        shown = nodes.literal_block(code, code, language="python")
        self.set_source_info(shown)
        try:
            reason = run_reason(self.arguments[0] if self.arguments else "")
        except ValueError as error:
            raise self.error(str(error)) from None
        if reason is not None:
            return [shown]
        printed = self._execute(code)
        if not printed.strip():
            return [shown]
        output = nodes.literal_block(printed, printed.rstrip("\n"), language="text")
        output["classes"].append("runblocks-output")
        return [shown, output]

    def _execute(self, code: str) -> str:
        """Run ``code`` in the page's namespace and folder; what it printed, or a build error."""
        env = self.env
        state = env.temp_data.setdefault(_STATE, _new_state(env))
        printed = io.StringIO()
        where = f"{env.docname}.md, the block at line {self.lineno}"
        with (
            _working_directory(state["folder"]),
            contextlib.redirect_stdout(printed),
            contextlib.redirect_stderr(printed),
            warnings.catch_warnings(record=True) as caught,
        ):
            warnings.simplefilter("always")
            try:
                exec(compile(code, where, "exec"), state["namespace"])
            except BaseException as error:  # a SystemExit of a CLI call too
                last = traceback.format_exception_only(type(error), error)[-1].strip()
                raise self.error(f"{where} raised {last}") from None
        for warning in caught:
            self.state.document.reporter.warning(
                f"{where} warned: {warning.category.__name__}: {warning.message}",
                line=self.lineno,
            )
        return printed.getvalue()


def _new_state(env: Any) -> dict[str, Any]:
    folder = tempfile.mkdtemp(prefix="crossent-docs-")
    env.app.connect("build-finished", lambda *_: shutil.rmtree(folder, ignore_errors=True))
    return {"namespace": {"__name__": "__main__"}, "folder": folder}


@contextlib.contextmanager
def _working_directory(folder: str) -> Any:
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_directive("python", PythonBlock)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
