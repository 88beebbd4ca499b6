"""Plant the bugs of issue 22's audit, one at a time, and name the test that kills each.

``python tools/plant.py`` copies ``src/`` and ``tests/`` into a temporary folder, changes one
line as the table below says (rebuilding the C extensions when the change is in C), runs the
tests that should catch it with ``pytest -x``, and prints the first failing test, or
``SURVIVED``. Exit status 1 if any bug survives. The plants are those that survived or were
caught only by accident at commit b718cb0; docs/testing.md records the answers.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Plant:
    name: str
    file: str  # relative to src/crossent
    old: str  # must occur exactly once
    new: str
    tests: tuple[str, ...]


PLANTS = (
    Plant(
        "ignore mask `target != ignore_index` → `target >= 0` (torch-op pass)",
        "torch/_torch_ops.py",
        "keep = target != options.ignore_index",
        "keep = target >= 0",
        ("test_conformance.py", "test_torch_cross_entropy.py"),
    ),
    Plant(
        "the floating-point check on logits skipped",
        "torch/_logits_loss.py",
        "    if not logits.is_floating_point():\n        raise TypeError(",
        "    if False:\n        raise TypeError(",
        ("test_torch_errors.py", "test_torch_cross_entropy.py"),
    ),
    Plant(
        "`perplexity` ignores the model it is given",
        "measures.py",
        '    mode = _checks.check_reduction(reduction, allowed=("none", "mean"))\n'
        "    nats, given = _pairwise(_cross_entropy_nats, locals(), pred_optional=True)",
        "    pred_probs = pred_log_probs = pred_logits = None\n"
        '    mode = _checks.check_reduction(reduction, allowed=("none", "mean"))\n'
        "    nats, given = _pairwise(_cross_entropy_nats, locals(), pred_optional=True)",
        ("test_measures_reference.py", "test_measures_identities.py", "test_edge_cases.py"),
    ),
    Plant(
        "`crossent score --bins` ignored",
        "cli/score.py",
        "bins=args.bins,",
        "bins=10,",
        ("test_cli_classifier.py", "test_cli_conventions.py"),
    ),
    Plant(
        "quantiser floor → round to nearest (C)",
        "coding/_quantise.c",
        "(double)(int64_t)(running * factor)",
        "(double)(int64_t)(running * factor + 0.5)",
        ("test_coding_labels.py", "test_coding.py"),
    ),
    Plant(
        "float16/bfloat16 gradient zeroed",
        "torch/_logits_loss.py",
        "        kernel(rows, target, options, factor, grad, None, known_lse=lse)\n"
        "        return grad",
        "        kernel(rows, target, options, factor, grad, None, known_lse=lse)\n"
        "        return grad.zero_() if grad.dtype in (torch.float16, torch.bfloat16) else grad",
        ("test_torch_cross_entropy.py",),
    ),
)


def main() -> int:
    survived = 0
    for plant in PLANTS:
        verdict = run(plant)
        survived += verdict == "SURVIVED"
        print(f"{plant.name}: {verdict}", flush=True)
    return 1 if survived else 0


def run(plant: Plant) -> str:
    with tempfile.TemporaryDirectory(prefix="crossent-plant-") as folder:
        work = Path(folder)
        for name in ("src", "tests"):
            shutil.copytree(ROOT / name, work / name, ignore=shutil.ignore_patterns("__pycache__"))
        for name in ("pyproject.toml", "setup.py"):
            shutil.copy2(ROOT / name, work / name)
        target = work / "src" / "crossent" / plant.file
        text = target.read_text()
        if text.count(plant.old) != 1:
            return f"NOT PLANTED: the line is not in {plant.file} once (update tools/plant.py)"
        target.write_text(text.replace(plant.old, plant.new))
        if target.suffix == ".c":
            subprocess.run(
                [sys.executable, "setup.py", "build_ext", "--inplace", "--force"],
                cwd=work, check=True, capture_output=True,
            )  # fmt: skip
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
             "-m", "not slow", *[f"tests/{t}" for t in plant.tests]],
            cwd=work, env={**os.environ, "PYTHONPATH": str(work / "src")},
            capture_output=True, text=True,
        )  # fmt: skip
        if done.returncode == 0:
            return "SURVIVED"
        failed = re.search(r"^(?:FAILED|ERROR) (\S+)", done.stdout, re.MULTILINE)
        return f"killed by {failed.group(1)}" if failed else done.stdout[-300:]


if __name__ == "__main__":
    sys.exit(main())
