"""What a user installs: the extras and their errors, the kernel's warning, the sdist, the wheel.

The built-package tests (``slow``) build the sdist and the wheel as a release does, make the
wheel manylinux, install it into a fresh virtual environment with its dependencies only, and
use it there; ``pytest --collect-only`` runs from the unpacked sdist.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
import venv
import warnings
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest
import torch
from packaging.requirements import Requirement

from crossent import _extras
from crossent.cli import _EXTRA
from crossent.torch import _native_rows, cross_entropy

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
OPTIONAL = sorted(_extras.EXTRAS)
DISTRIBUTION = {"sklearn": "scikit-learn"}  # where a module's distribution has another name


def requirements() -> list[Requirement]:
    return [Requirement(text) for text in metadata.requires("crossent") or []]


def in_extra(requirement: Requirement, extra: str) -> bool:
    return requirement.marker is not None and requirement.marker.evaluate({"extra": extra})


def test_each_optional_module_comes_with_the_extra_its_error_names() -> None:
    for module, extra in _extras.EXTRAS.items():
        names = {r.name for r in requirements() if in_extra(r, extra)}
        assert DISTRIBUTION.get(module, module) in names, (module, extra)
    assert set(_EXTRA.values()) <= set(metadata.metadata("crossent").get_all("Provides-Extra"))


def test_the_core_install_needs_only_what_the_measures_loss_and_explain_use() -> None:
    core = {r.name for r in requirements() if r.marker is None}
    assert core == {"torch", "numpy", "rich", "bitarray"}


def test_a_float32_cpu_loss_without_the_kernel_warns_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_native_rows, "_native", None)
    monkeypatch.setattr(_native_rows, "NATIVE_LEVEL", None)
    monkeypatch.setattr(_native_rows, "_warned_without_kernel", False)
    logits, target = torch.randn(8, 5), torch.arange(8) % 5
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = cross_entropy(logits, target)
        second = cross_entropy(logits, target)
        cross_entropy(logits.double(), target)  # float64 takes torch ops anyway
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert messages[0] == (
        "crossent.torch's compiled CPU kernel is not in this install (it is built where a C "
        "compiler is found when crossent is installed), so float32 CPU losses run on torch "
        "ops: the same numbers, about 3x slower. crossent.torch.native_available() tells "
        "whether the kernel is there."
    )
    assert caught[0].category is UserWarning
    assert not _native_rows.native_available()
    expected = torch.nn.functional.cross_entropy(logits, target)
    torch.testing.assert_close(first, expected)
    torch.testing.assert_close(second, expected)


def test_no_warning_where_the_kernel_is_built_or_not_suited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_native_rows, "_warned_without_kernel", False)
    logits, target = torch.randn(8, 5), torch.arange(8) % 5
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cross_entropy(logits, target)  # the kernel (built here) or nothing
        monkeypatch.setattr(_native_rows, "_native", None)
        cross_entropy(logits, target.float().softmax(0).expand(5, 8).T)  # probability targets
        cross_entropy(logits, target, softcap=30.0)


def test_constriction_missing_names_the_compress_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from crossent.coding import compress

    monkeypatch.setitem(sys.modules, "constriction", None)
    expected = "crossent.coding.compress needs constriction, which is not installed"
    with pytest.raises(
        _extras.MissingExtraError, match=rf"{expected}: pip install 'crossent\[compress\]'"
    ):
        compress(
            Path("unused"),
            np.zeros(3, dtype=np.int64),
            lambda a, b: np.ones((b - a, 2)),
            identity={},
            chunk_rows=2,
        )


SCRIPT = """
import contextlib, io, json, sys
for name in {blocked!r}:
    sys.modules[name] = None
from crossent.cli import main
results = []
for argv in {calls!r}:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as stop:
            code = stop.code
    results.append([code, out.getvalue(), err.getvalue()])
for module in {imports!r}:
    try:
        __import__(module)
        results.append(["imported", module])
    except ImportError as error:
        results.append([type(error).__name__, str(error)])
print(json.dumps(results))
"""


def without(blocked: list[str], calls: list[list[str]], imports: tuple[str, ...] = ()) -> list:
    """Run the command lines and imports in a new interpreter where ``blocked`` are missing."""
    script = SCRIPT.format(blocked=blocked, calls=calls, imports=list(imports))
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.splitlines()[-1])


def missing(command: str, module: str, extra: str) -> str:
    needs = f"needs {module}, which is not installed: pip install 'crossent[{extra}]'"
    return f"crossent {command}: error: {needs}\n"


def test_the_core_install_runs_explain_and_names_the_extra_other_commands_need() -> None:
    calls = [
        ["explain"],
        ["--help"],
        ["train", "--dataset", "iris", "--epochs", "3"],
        ["predict", "runs/x", "new.csv", "-o", "p.csv"],
        ["decompress", "runs/x", "data.csv", "labels.xent", "-o", "labels.csv"],
    ]
    imports = ("crossent.classifier", "crossent.sklearn", "crossent.torch")
    explain, listing, train, predict, decompress, *imported = without(OPTIONAL, calls, imports)
    assert explain[0] == 0
    assert "H(p, q)" in explain[1]
    assert listing[0] == 0
    assert "not installed: pip install 'crossent[classifier]'" in listing[1]
    assert train == [2, "", missing("train", "pyarrow", "classifier")]
    assert predict == [2, "", missing("predict", "pyarrow", "classifier")]
    assert decompress == [2, "", missing("decompress", "pyarrow", "compress")]  # the command's
    needs = "needs {}, which is not installed: pip install 'crossent[classifier]'"
    assert imported == [
        ["MissingExtraError", "crossent.classifier " + needs.format("pyarrow")],
        ["MissingExtraError", "crossent.sklearn " + needs.format("sklearn")],
        ["imported", "crossent.torch"],
    ]


def test_a_dependency_missing_at_run_time_names_the_extra(tmp_path: Path) -> None:
    quick = ["train", "--dataset", "iris", "--epochs", "1", "--no-reference"]
    [no_sklearn] = without(["sklearn"], [quick])
    assert no_sklearn == [2, "", missing("train", "sklearn", "classifier")]
    out = tmp_path / "run"
    [no_matplotlib] = without(["matplotlib"], [[*quick, "--out", str(out)]])
    assert no_matplotlib[0] == 2
    assert no_matplotlib[2] == missing("train", "matplotlib", "classifier")
    assert not out.exists()  # trained, then nothing half-written


@dataclass(frozen=True)
class Built:
    sdist: Path
    wheel: Path


def run(*command: object, **options: object) -> subprocess.CompletedProcess[str]:
    """Run a command; its output is in the assertion's message when it fails."""
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, **options)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
    return done  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """The sdist, and the wheel built from it, as `make dist` makes them."""
    out = tmp_path_factory.mktemp("dist")
    env = {
        **os.environ,
        "CROSSENT_REQUIRE_KERNEL": "1",
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
    }
    run(sys.executable, "-m", "build", "--outdir", out / "built", ROOT, env=env)
    [wheel] = (out / "built").glob("*.whl")
    if sys.platform == "linux":
        run(BIN / "auditwheel", "repair", "--wheel-dir", out, wheel, env=env)
        [wheel] = out.glob("*.whl")
    [sdist] = (out / "built").glob("*.tar.gz")
    return Built(sdist, wheel)


@pytest.mark.slow
def test_the_wheel_is_abi3_manylinux_with_the_kernel_and_the_type_marker(built: Built) -> None:
    assert re.fullmatch(
        r"crossent-[^-]+-cp310-abi3-(manylinux[^-]*_x86_64|[^-]+)\.whl", built.wheel.name
    )
    if sys.platform == "linux":
        assert "manylinux" in built.wheel.name
    names = set(zipfile.ZipFile(built.wheel).namelist())
    dist_info = next(n.split("/")[0] for n in names if n.endswith(".dist-info/METADATA"))
    assert {"crossent/py.typed", f"{dist_info}/licenses/LICENSE"} <= names
    assert any(re.fullmatch(r"crossent/torch/_native\.abi3\.(so|pyd)", n) for n in names)
    assert not any(n.endswith(".c") for n in names)
    run(BIN / "abi3audit", "--strict", "--summary", built.wheel)  # limited API of 3.10 only
    run(sys.executable, "-m", "twine", "check", "--strict", built.wheel, built.sdist)


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_environment_and_runs(built: Built, tmp_path: Path) -> None:
    venv.create(tmp_path / "env", with_pip=True)
    python = tmp_path / "env" / "bin" / "python"
    run(python, "-m", "pip", "install", "--quiet", built.wheel)  # torch: pip's cache or find-links
    installed = json.loads(run(python, "-m", "pip", "list", "--format", "json").stdout)
    assert not {"pyarrow", "scikit-learn", "matplotlib", "constriction"} & {
        p["name"] for p in installed
    }
    run(python, ROOT / "tests" / "wheel_smoke.py", cwd=tmp_path)
    assert run(tmp_path / "env" / "bin" / "crossent", "--version").stdout.startswith("crossent ")
    train = subprocess.run(
        [tmp_path / "env" / "bin" / "crossent", "train"], capture_output=True, text=True
    )
    assert (train.returncode, train.stderr) == (2, missing("train", "pyarrow", "classifier"))
    user = tmp_path / "user.py"
    user.write_text(
        textwrap.dedent("""
        import torch
        from crossent.torch import cross_entropy

        loss: torch.Tensor = cross_entropy(torch.zeros(2, 3), torch.tensor([0, 2]))
    """)
    )
    # a user's strict type check reads crossent's annotations (py.typed), with no stub missing
    run(BIN / "mypy", "--strict", "--python-executable", python, user, cwd=tmp_path)


@pytest.mark.slow
def test_the_sdist_holds_the_tests_and_they_collect(built: Built, tmp_path: Path) -> None:
    with tarfile.open(built.sdist) as archive:
        archive.extractall(tmp_path, filter="data")
    [unpacked] = tmp_path.iterdir()
    shipped = {p.relative_to(unpacked) for p in (unpacked / "tests").rglob("*.py")}
    assert shipped == {p.relative_to(ROOT) for p in (ROOT / "tests").rglob("*.py")}
    for name in (
        "LICENSE",
        "CHANGELOG.md",
        "src/crossent/py.typed",
        "src/crossent/torch/_native.c",
    ):
        assert (unpacked / name).is_file(), name
    assert not list(unpacked.rglob("*.so"))
    env = {**os.environ, "PYTHONPATH": str(unpacked / "src")}  # the sdist's crossent, not ours
    collected = run(
        sys.executable,
        "-m",
        "pytest",
        "--collect-only",
        "-q",
        "-p",
        "no:cacheprovider",
        cwd=unpacked,
        env=env,
    )
    summary = collected.stdout.splitlines()[-1]  # "N/M tests collected (K deselected) in …"
    assert re.match(r"\d+(/\d+)? tests collected", summary), collected.stdout[-2000:]
    assert "error" not in summary
