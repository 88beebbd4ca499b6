"""Mutation testing of crossent's core: ``make mutate``, or ``python tools/mutate.py [module...]``.

Each module of :data:`MODULES` is mutated by mutmut (a small change at a time: an operator, a
constant, a comparison, a returned value) and every mutant is run against the tests that
exercise that module — only those of them that reach the mutated function, as mutmut traces
them. A mutant the tests fail on is *killed*; one they pass on *survived*: either a test is
missing, or the mutant is equivalent (it cannot change any result), which docs/testing.md
records with a line of why. Each module runs in a folder of its own under ``build/mutants/``
(mutmut reads its settings from a pyproject.toml there), so its results stay until the module
changes.

Prints one line per module: mutants, killed, timed out, survived, score (killed + timed out
over all but the skipped), and writes the surviving mutants' diffs to
``build/mutants/<module>/survivors.txt``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / "build" / "mutants"
BIN = Path(sys.executable).parent

# module → the tests that exercise it, and a pytest -k expression choosing among them (each
# selection takes seconds: it runs once per mutant, up to its first failure)
MODULES: dict[str, tuple[list[str], str]] = {
    "measures.py": (["test_measures_reference.py", "test_measures_identities.py",
                     "test_measures_errors.py", "test_edge_cases.py", "test_gradients.py"], ""),
    "_checks.py": (["test_checks.py", "test_edge_cases.py", "test_measures_reference.py"], ""),
    "_ops.py": (["test_gradients.py", "test_edge_cases.py", "test_measures_identities.py"], ""),
    "torch/_spec.py": (["test_torch_errors.py", "test_torch_cross_entropy.py",
                        "test_torch_citizen.py"], ""),
    "torch/_rows.py": (["test_torch_cross_entropy.py", "test_torch_citizen.py",
                        "test_conformance.py"], ""),
    "torch/_torch_ops.py": (["test_conformance.py", "test_torch_cross_entropy.py"], ""),
    "torch/_native_rows.py": (["test_native_cross_entropy.py", "test_torch_cross_entropy.py"], ""),
    "torch/_logits_loss.py": (["test_torch_cross_entropy.py", "test_torch_citizen.py",
                               "test_torch_errors.py"], ""),
    "torch/_differentiable.py": (["test_torch_citizen.py"],
                                 "gradgrad or vmap or jacrev or grad_of or grad_transform"),
    "torch/_saved.py": (["test_torch_cross_entropy.py", "test_torch_errors.py",
                         "test_torch_linear_cross_entropy.py", "test_triton_cross_entropy.py"],
                        "not kernel_matches"),
    "torch/_head_loss.py": (["test_torch_linear_cross_entropy.py", "test_torch_errors.py",
                             "test_torch_citizen.py"], ""),
    "torch/_head_pass.py": (["test_torch_linear_cross_entropy.py"], ""),
    "torch/_class_blocks.py": (["test_torch_linear_cross_entropy.py"], "block"),
    "torch/_dispatch.py": (["test_conformance.py", "test_triton_cross_entropy.py"],
                           "plain or float64"),
    "coding/codes.py": (["test_coding.py", "test_coding_huffman.py"], ""),
    "coding/huffman.py": (["test_coding_huffman.py"], ""),
    "coding/labels.py": (["test_coding_labels.py", "test_corruption.py"], ""),
    "classifier/evaluate.py": (["test_classifier_evaluate.py", "test_cli_classifier.py"], ""),
    "classifier/predictions.py": (["test_classifier_predictions.py", "test_classifier_evaluate.py",
                                   "test_cli_classifier.py"], ""),
}  # fmt: skip
# what the mutants' test runs leave out: torch.compile, export and TorchScript trace the
# code, which mutmut's trampolines would make them trace instead; processes the mutant is
# not in (a subprocess imports the unmutated package)
DESELECT = (
    "not compile and not export and not graph and not torchscript and not parallel"
    " and not warn_at_the_callers_line"  # a warning's frame: the trampoline's, under mutmut
)


def run(module: str, workers: int) -> dict[str, int]:
    """Mutate ``module`` (relative to src/crossent) and run its tests; the counts by kind."""
    folder = WORK / module.replace("/", "_").removesuffix(".py")
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("src", "tests", "setup.py"):
        link = folder / name
        if not link.exists():
            link.symlink_to(ROOT / name)
    tests, keyword = MODULES[module]
    (folder / "pyproject.toml").write_text(
        _settings(module, [f"tests/{t}" for t in tests], keyword)
    )
    # mutmut forks a child per mutant from a process that has run torch: GNU OpenMP's threads
    # do not survive a fork, and a child's first parallel op would wait for them for ever
    environment = {**os.environ, "HYPOTHESIS_PROFILE": "mutation", "PYTHONPATH": "",
                   "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # fmt: skip
    started = time.monotonic()
    with (folder / "mutmut.log").open("w") as log:
        done = subprocess.run(
            [str(BIN / "mutmut"), "run", "--max-children", str(workers)],
            cwd=folder, env=environment, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"mutmut failed on {module}: see {folder / 'mutmut.log'}")
    results = subprocess.run(
        [str(BIN / "mutmut"), "results", "--all", "true"],
        cwd=folder, env=environment, capture_output=True, text=True,
    ).stdout  # fmt: skip
    counts = _counts(results)
    counts["seconds"] = round(time.monotonic() - started)
    _write_survivors(folder, results, environment)
    return counts


def _settings(module: str, tests: list[str], keyword: str) -> str:
    """The project's pyproject.toml with mutmut's section for this module. A mutant's tests
    time out at 5 times their own time plus 10 s: a mutant that makes them that much slower
    broke the code (a loop that does not end, a block of one row)."""
    ours = (ROOT / "pyproject.toml").read_text()
    chosen = f"({DESELECT}) and ({keyword})" if keyword else DESELECT
    options = ["-p", "no:cacheprovider", "-x", "-q", "-k", chosen]
    return ours + (
        "\n[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        f'only_mutate = ["src/crossent/{module}"]\n'
        f"pytest_add_cli_args_test_selection = {json.dumps(tests)}\n"
        f"pytest_add_cli_args = {json.dumps(options)}\n"
        "timeout_multiplier = 5.0\n"
        "timeout_constant = 10.0\n"
    )


def _counts(results: str) -> dict[str, int]:
    """How many mutants ``mutmut results --all true`` lists of each kind."""
    kinds = re.findall(r"^\s*\S+: (.+)$", results, re.MULTILINE)
    return {kind: kinds.count(kind) for kind in sorted(set(kinds))}


def _write_survivors(folder: Path, results: str, environment: dict[str, str]) -> None:
    names = re.findall(r"^\s*(\S+): survived$", results, re.MULTILINE)
    diffs = [
        subprocess.run(
            [str(BIN / "mutmut"), "show", name],
            cwd=folder,
            env=environment,
            capture_output=True,
            text=True,
        ).stdout
        for name in names
    ]
    (folder / "survivors.txt").write_text("\n".join(diffs))


def score(counts: dict[str, int]) -> float:
    """Killed (a timeout is a kill: the mutant broke the code) over the mutants tested."""
    caught = counts.get("killed", 0) + counts.get("timeout", 0) + counts.get("segfault", 0)
    tested = caught + counts.get("survived", 0) + counts.get("suspicious", 0)
    return caught / tested if tested else 1.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "modules", nargs="*", default=list(MODULES), help="relative to src/crossent"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    for module in args.modules:
        counts = run(module, args.workers)
        print(f"{module}: {counts}, score {score(counts):.1%}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
