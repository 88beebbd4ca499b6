"""Start-up stays fast: nothing heavy is imported before it is needed."""

from __future__ import annotations

import subprocess
import sys

import pytest


def imported_after(statement: str) -> set[str]:
    """The top-level modules loaded by ``statement`` in a fresh interpreter."""
    code = f"import sys\n{statement}\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    return set(done.stdout.split())


def test_import_crossent_imports_no_torch() -> None:
    """The measures are imported on first use: ``import crossent`` (the command line's first
    step) loads neither torch nor NumPy's heavy friends."""
    loaded = imported_after("import crossent")
    assert "torch" not in loaded
    assert "matplotlib" not in loaded


@pytest.mark.parametrize("module", ["crossent.torch", "crossent.torch.distributed"])
def test_the_losses_import_no_compiler(module: str) -> None:
    """torch.compiler.disable is applied at a split loss's first call: at import it pulled in
    torch._dynamo (over a second), and Triton with it."""
    loaded = imported_after(f"import {module}")
    assert "torch._dynamo" not in loaded
    assert "triton" not in loaded


def test_a_measure_is_there_when_asked_for() -> None:
    loaded = imported_after("import crossent; crossent.entropy([0.5, 0.5])")
    assert "torch" in loaded


HEAVY = ("torch", "numpy", "pyarrow", "matplotlib", "sklearn", "transformers", "constriction")


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["train", "--help"],
        ["score", "--help"],
        ["predict", "--help"],
        ["compress", "--help"],
        ["explain", "--help"],
        ["text", "score", "--help"],
        ["train", "--epochs", "x"],  # an argument error
        ["trian"],  # a command that does not exist
    ],
    ids=" ".join,
)
def test_help_and_argument_errors_import_nothing_heavy(argv: list[str]) -> None:
    """The command modules build their parsers from light modules; a command imports torch,
    pyarrow and the rest when it runs (docs/benchmarks.md, "Start-up of every command")."""
    call = f"from crossent.cli import main; main({argv!r})"
    loaded = imported_after(f"import contextlib\nwith contextlib.suppress(SystemExit):\n    {call}")
    assert "crossent.cli" in loaded
    assert loaded.isdisjoint(HEAVY), sorted(loaded & set(HEAVY))


def test_the_light_classifier_options_import_no_torch() -> None:
    loaded = imported_after("from crossent.classifier.options import SGDOptions; SGDOptions()")
    assert loaded.isdisjoint(HEAVY)
    assert "crossent.classifier" in loaded


def test_the_classifier_package_still_gives_its_function_train() -> None:
    """Importing the submodule crossent.classifier.train binds it on the package by its
    name; the public name stays the function."""
    done = subprocess.run(
        [sys.executable, "-c", "import crossent.classifier.train, crossent.classifier as c; "
         "print(callable(c.train), type(c.train).__name__, c.History.__name__)"],
        capture_output=True, text=True, check=True, timeout=120,
    )  # fmt: skip
    assert done.stdout.split() == ["True", "function", "History"]
