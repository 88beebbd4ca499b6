"""Sphinx configuration of crossent's documentation site: ``make docs`` builds it into
docs/_build/html with warnings as errors.

The pages are the Markdown files of docs/ (MyST); the API reference comes from the docstrings
(autodoc, Google-style ``Args:`` sections read by napoleon). Every ```` ```python ```` block of
a page is run while the site is built, and what it prints is shown under it (``_ext/runblocks.py``),
so the numbers on the pages are computed, not typed. Nothing is fetched from the internet.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "_ext"))

import crossent  # noqa: E402  (after the path: the installed package, for its version)

project = "crossent"
author = "The crossent developers"
copyright = "The crossent developers (MIT licence)"
version = release = crossent.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "runblocks",
]

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_ext", "benchmarks/*.csv"]

# MyST: ```python blocks are the `python` directive of _ext/runblocks.py (run at build time);
# $…$ is maths; headings get anchors for links such as failure-modes.md#exit-status.
myst_fence_as_directive = ["python"]
myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 4

# autodoc: the signature as written (no evaluated defaults), members in source order, type hints
# in the signature only; napoleon reads the Google-style Args/Returns/Raises sections.
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = True
autodoc_default_options = {"members": False}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False

html_theme = "pydata_sphinx_theme"
html_title = f"crossent {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
    "footer_start": ["copyright"],
    "footer_end": ["sphinx-version"],
}
html_static_path: list[str] = []
# No intersphinx and no remote images: the site builds with no network.
