"""docs/api.md promises that every public name is documented with its arguments and an example:
this holds it to that. For each name of the public modules' ``__all__``:

- its docstring has a ``>>>`` example (run by ``pytest --doctest-modules`` over src/);
- every parameter is described in an ``Args:`` section (``Attributes:`` for a dataclass's
  fields), under its own name: a parameter added without a description fails here;
- each public method the class defines has a docstring, with ``Args:`` for its parameters;
- the API reference of the docs site (docs/reference/) has an entry for it.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

PUBLIC_MODULES = (
    "crossent",
    "crossent.torch",
    "crossent.torch.distributed",
    "crossent.coding",
    "crossent.classifier",
    "crossent.sklearn",
    "crossent.integrations.transformers",
)
REFERENCE = Path(__file__).parents[1] / "docs" / "reference"
_SECTION = re.compile(r"^(\s*)(Args|Attributes):\s*$")
_ENTRY = re.compile(r"^([\w*]+(?:\s*,\s*[\w*]+)*)\s*(?:\([^)]*\))?\s*:")


def public_names(*, callables: bool = False) -> list[tuple[str, str]]:
    """(module, name) of every public name; with ``callables``, only functions and classes
    (constants such as ``TESTED`` have no docstring of their own at run time)."""
    names = []
    for module in PUBLIC_MODULES:
        imported = importlib.import_module(module)
        names += [
            (module, name)
            for name in imported.__all__
            if name != "__version__" and (callable(getattr(imported, name)) or not callables)
        ]
    return names


def described(doc: str) -> set[str]:
    """The names described in the docstring's ``Args:`` and ``Attributes:`` sections: each
    entry starts at the section's indentation + 4 with ``name:`` or ``name, other:``."""
    names: set[str] = set()
    indent: int | None = None
    for line in doc.splitlines():
        header = _SECTION.match(line)
        if header:
            indent = len(header.group(1))
            continue
        if indent is None or not line.strip():
            continue
        depth = len(line) - len(line.lstrip())
        if depth <= indent:
            indent = None  # the section ended
        elif depth == indent + 4 and (entry := _ENTRY.match(line.strip())):
            names.update(part.strip().lstrip("*") for part in entry.group(1).split(","))
    return names


def parameters(function: Any) -> list[str]:
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        return []
    return [name for name in signature.parameters if name not in ("self", "cls")]


def own_methods(cls: type) -> list[tuple[str, Any]]:
    """The public methods ``cls`` itself defines (not those it inherits)."""
    methods = []
    for name, value in vars(cls).items():
        function = value.__func__ if isinstance(value, (classmethod, staticmethod)) else value
        if not name.startswith("_") and inspect.isfunction(function):
            methods.append((name, function))
    return methods


@pytest.mark.parametrize(("module", "name"), public_names(callables=True), ids=str)
def test_every_public_name_has_an_example(module: str, name: str) -> None:
    obj = getattr(importlib.import_module(module), name)
    doc = inspect.getdoc(obj) or ""
    assert ">>>" in doc, f"{module}.{name} has no example (>>>) in its docstring"


@pytest.mark.parametrize(("module", "name"), public_names(callables=True), ids=str)
def test_every_parameter_is_described(module: str, name: str) -> None:
    obj = getattr(importlib.import_module(module), name)
    wanted = [p for p in parameters(obj) if not (isinstance(obj, type) and p in ("args", "kwargs"))]
    missing = [p for p in wanted if p not in described(inspect.getdoc(obj) or "")]
    assert not missing, f"{module}.{name}: no Args/Attributes entry for {missing}"


@pytest.mark.parametrize(
    ("module", "name"),
    [(m, n) for m, n in public_names() if isinstance(getattr(importlib.import_module(m), n), type)],
    ids=str,
)
def test_every_public_method_is_documented(module: str, name: str) -> None:
    cls = getattr(importlib.import_module(module), name)
    for method, function in own_methods(cls):
        doc = inspect.getdoc(function) or ""
        assert doc, f"{module}.{name}.{method} has no docstring"
        missing = [p for p in parameters(function) if p not in described(doc)]
        assert not missing, f"{module}.{name}.{method}: no Args entry for {missing}"


def test_the_api_reference_lists_every_public_name() -> None:
    listed = set(re.findall(r"^\.\. auto\w+:: ([\w.]+)", _reference_text(), re.MULTILINE))
    expected = {f"{module}.{name}" for module, name in public_names()}
    assert expected - listed == set(), "missing from docs/reference/"
    modules = {name.rpartition(".")[0] for name in listed}
    assert modules <= {*PUBLIC_MODULES, "crossent.coding.huffman"}


def _reference_text() -> str:
    return "\n".join(page.read_text() for page in sorted(REFERENCE.glob("*.md")))


def test_described_reads_napoleons_sections() -> None:
    doc = """Summary.

    Args:
        a: first.
        b, c (int): both,
            over two lines; d: is not an entry.
        **options: the rest.

    Returns:
        e: not a parameter.
    """
    assert described(inspect.cleandoc(doc)) == {"a", "b", "c", "options"}
