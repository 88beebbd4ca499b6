"""The compiled kernels under AddressSanitizer and UndefinedBehaviorSanitizer: ``make sanitize``.

Builds ``src/crossent/torch/_native.c`` and ``src/crossent/coding/_quantise.c`` with the flags
of ``setup.py`` plus ``-fsanitize=address,undefined``, into a copy of the package in a
temporary folder, and runs their tests (``tests/test_native_cross_entropy.py``, the C kernel's
cases of ``tests/test_conformance.py``, ``tests/test_coding_labels.py``) against that copy,
with the AddressSanitizer runtime preloaded (Python itself is not built with it). Any report
of either sanitizer fails the run.

    python tools/sanitize.py [pytest arguments...]
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SANITIZERS = [
    "-fsanitize=address,undefined",
    "-fno-sanitize-recover=all",
    "-fno-omit-frame-pointer",
    "-g",
]
KERNELS = {"torch/_native.c": "torch", "coding/_quantise.c": "coding"}  # source: package
TESTS = [
    "tests/test_native_cross_entropy.py",
    "tests/test_conformance.py",
    "tests/test_coding_labels.py",
    "-k",
    "not head and not Triton and not parallel and not GPU",
]


def main(arguments: list[str]) -> int:
    compiler = os.environ.get("CC", "gcc")
    runtime = _library(compiler, "libasan.so")
    if not Path(runtime).exists():
        print(f"sanitize: {compiler} has no AddressSanitizer runtime ({runtime})", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="crossent-sanitize-") as folder:
        package = Path(folder) / "crossent"
        shutil.copytree(
            ROOT / "src" / "crossent", package, ignore=shutil.ignore_patterns("*.so", "__pycache__")
        )
        for source, subpackage in KERNELS.items():
            _build(compiler, ROOT / "src" / "crossent" / source, package / subpackage)
        environment = {
            **os.environ,
            "PYTHONPATH": folder,  # this copy, not the installed package
            # the C++ runtime with it: torch throws C++ exceptions, whose interceptor
            # needs libstdc++ loaded when the sanitizer starts
            "LD_PRELOAD": f"{runtime} {_library(compiler, 'libstdc++.so')}",
            "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",  # CPython's own allocations
            "UBSAN_OPTIONS": "print_stacktrace=1:halt_on_error=1",
        }
        # --capture=sys: a sanitizer writes its report to file descriptor 2, which pytest
        # would otherwise capture and lose when the report aborts the run
        command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        command += ["--capture=sys", *TESTS, *arguments]
        print("sanitize:", " ".join(command[1:]), flush=True)
        return subprocess.run(command, cwd=ROOT, env=environment).returncode


def _build(compiler: str, source: Path, folder: Path) -> None:
    """``source`` compiled into ``folder`` as setup.py compiles it, with the sanitizers."""
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    include = sysconfig.get_paths()["include"]
    command = [
        compiler,
        "-shared",
        "-fPIC",
        *_setup_flags(),
        *SANITIZERS,
        f"-I{include}",
        str(source),
        "-o",
        str(folder / f"{source.stem}{suffix}"),
    ]
    print("sanitize:", " ".join(command), flush=True)
    subprocess.run(command, check=True)


def _library(compiler: str, name: str) -> str:
    """The path of the compiler's ``name`` (a runtime library)."""
    return subprocess.run(
        [compiler, f"-print-file-name={name}"], capture_output=True, text=True, check=True
    ).stdout.strip()


def _setup_flags() -> list[str]:
    """``FLAGS`` of setup.py, read without running it: the wheel's own compiler flags."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(target, ast.Name) and target.id == "FLAGS" for target in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise LookupError("setup.py defines no FLAGS")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
