"""Start-up stays fast: nothing heavy is imported before it is needed."""

from __future__ import annotations

import subprocess
import sys

import pytest


def imported_after(statement: str) -> set[str]:
    """The top-level modules loaded by ``statement`` in a fresh interpreter."""
    code = f"import sys; {statement}; print(' '.join(sorted(sys.modules)))"
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
