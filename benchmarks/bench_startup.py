"""Benchmark start-up: every subcommand's whole-process time, now and at an older commit.

What is measured
    The wall time of a fresh ``python -c "from crossent.cli import main; main()" ARGS`` from
    start to exit, for ``--help`` of crossent and of each command, an argument error, and a
    real run of each command on small data (iris: a run folder trained here, its 150 rows,
    a 1,000-row probabilities file). The same command lines run with the code of ``--old``
    (a checkout of an older commit, put first on PYTHONPATH; its C kernel is copied from this
    tree) interleaved with the code here, ``--repeat`` times each; the median and the 20th /
    80th percentiles are reported, with the yardsticks ``python -c pass``, ``python -c "import
    sklearn"`` and ``python -c "import torch"``. ``python -X importtime`` of ``crossent --help``
    lists what its time is spent on.

Usage:
    git worktree add /tmp/crossent-old b718cb0
    python benchmarks/bench_startup.py --old /tmp/crossent-old   # docs/benchmarks/startup.csv
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_measures import add_csv_option, cpu_model, git_commit, log, results_path, write_csv

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks"
MAIN = "import sys; from crossent.cli import main; sys.exit(main(sys.argv[1:]))"
COMMANDS = (
    ["--help"],
    ["train", "--help"],
    ["predict", "--help"],
    ["score", "--help"],
    ["compress", "--help"],
    ["decompress", "--help"],
    ["explain", "--help"],
    ["text", "score", "--help"],
    ["train", "--epochs", "x"],
    ["explain"],
    ["score", "{probs}", "--target", "label"],
    ["predict", "{run}", "{iris}", "-o", "{work}/p{n}.csv"],
    ["compress", "{run}", "{iris}", "--target", "species", "-o", "{work}/l{n}.xent"],
    ["decompress", "{run}", "{iris}", "{work}/labels.xent", "-o", "{work}/l{n}.csv"],
)
YARDSTICKS = {
    "python -c pass": "pass",
    "python -c 'import sklearn'": "import sklearn",
    "python -c 'import torch'": "import torch",
}


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, int]:
    """Seconds from start to exit, and the exit status."""
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started, done.returncode


def environments(old: Path | None) -> dict[str, dict[str, str]]:
    """The code here, and the old checkout first on PYTHONPATH (with this tree's kernels)."""
    here = {**os.environ, "PYTHONPATH": "", "NO_COLOR": "1"}
    if old is None:
        return {"now": here}
    for built in (ROOT / "src" / "crossent").rglob("*.so"):
        target = old / "src" / built.relative_to(ROOT / "src")
        if target.parent.exists() and not target.exists():
            shutil.copy2(built, target)
    return {"now": here, "old": {**here, "PYTHONPATH": str(old / "src")}}


def prepare(work: Path, env: dict[str, str]) -> dict[str, str]:
    """A run folder trained on iris by the code of ``env``, the iris table, and a 1,000-row
    probabilities file, in ``work``."""
    import numpy as np
    from sklearn import datasets

    work.mkdir()
    iris = datasets.load_iris(as_frame=True).frame
    iris["species"] = np.asarray(["setosa", "versicolor", "virginica"])[iris.pop("target")]
    iris.to_csv(work / "iris.csv", index=False)
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), 1000)
    with (work / "probs.csv").open("w") as file:
        file.write("label,a,b,c\n")
        for label, row in zip(rng.integers(0, 3, 1000), probs, strict=True):
            file.write(f"{'abc'[label]},{row[0]:.17g},{row[1]:.17g},{row[2]:.17g}\n")
    train = [str(work / "iris.csv"), "--target", "species", "--epochs", "3", "--no-reference"]
    command = [sys.executable, "-c", MAIN, "train", *train, "--out", str(work / "run")]
    subprocess.run(command, check=True, capture_output=True, env=env)
    labels = ["compress", str(work / "run"), str(work / "iris.csv"), "--target", "species"]
    command = [sys.executable, "-c", MAIN, *labels, "-o", str(work / "labels.xent")]
    subprocess.run(command, check=True, capture_output=True, env=env)
    return {"run": str(work / "run"), "iris": str(work / "iris.csv"), "work": str(work),
            "probs": str(work / "probs.csv")}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, help="a checkout of an older commit to compare")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="one repeat, no CSV: a smoke test")
    add_csv_option(parser, DOCS / "startup.csv")
    args = parser.parse_args()
    repeat = 1 if args.quick else args.repeat
    envs = environments(args.old)
    rows = []
    with tempfile.TemporaryDirectory(prefix="crossent-startup-") as folder:
        files = {name: prepare(Path(folder) / name, env) for name, env in envs.items()}
        for command in COMMANDS:
            times: dict[str, list[float]] = {name: [] for name in envs}
            status: dict[str, int] = {}
            for n in range(repeat):  # interleaved: drift on a busy machine hits both
                for name, env in envs.items():
                    argv = [a.format(**files[name], n=n) for a in command]
                    seconds, status[name] = timed([sys.executable, "-c", MAIN, *argv], env)
                    times[name].append(seconds)
            shown = " ".join(Path(a.format(**files["now"], n="")).name for a in command)
            for name, found in times.items():
                rows.append({**row(f"crossent {shown}", name, found), "exit": status[name]})
            log(f"crossent {shown}: " + ", ".join(
                f"{name} {statistics.median(found):.2f} s" for name, found in times.items()
            ))  # fmt: skip
        for label, code in YARDSTICKS.items():
            found = [timed([sys.executable, "-c", code], envs["now"])[0] for _ in range(repeat)]
            rows.append({**row(label, "yardstick", found), "exit": 0})
            log(f"{label}: {statistics.median(found):.2f} s")
    path = results_path(args, DOCS / "startup.csv")
    if path is not None:
        about = {"cpu": cpu_model(), "python": sys.version.split()[0], "commit": git_commit(),
                 "date": time.strftime("%Y-%m-%d")}  # fmt: skip
        write_csv(path, rows, about)
    print(table(rows))
    print(importtime())


def row(command: str, code: str, times: list[float]) -> dict[str, object]:
    ordered = sorted(times)
    return {
        "command": command,
        "code": code,
        "median_s": round(statistics.median(times), 3),
        "p20_s": round(ordered[int(0.2 * (len(ordered) - 1))], 3),
        "p80_s": round(ordered[round(0.8 * (len(ordered) - 1))], 3),
        "repeat": len(times),
    }


def table(rows: list[dict[str, object]]) -> str:
    """Markdown: one line per command, the code here against the old commit."""
    by_command: dict[str, dict[str, dict[str, object]]] = {}
    for found in rows:
        by_command.setdefault(str(found["command"]), {})[str(found["code"])] = found
    lines = ["| command | now: median s (p20–p80) | before | before / now |", "|---|---|---|---|"]
    for command, codes in by_command.items():
        cells = {
            code: f"{found['median_s']:.2f} ({found['p20_s']:.2f}–{found['p80_s']:.2f})"
            + (f", exit {found['exit']}" if found["exit"] else "")
            for code, found in codes.items()
        }
        now = codes.get("now") or codes.get("yardstick")
        old = codes.get("old")
        ratio = f"{float(old['median_s']) / float(now['median_s']):.1f}×" if old and now else ""
        first = cells.get("now") or cells.get("yardstick", "")
        lines.append(f"| `{command}` | {first} | {cells.get('old', '')} | {ratio} |")
    return "\n".join(lines)


def importtime() -> str:
    """The slowest imports of ``crossent --help``, from ``python -X importtime``."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", MAIN, "--help"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""},
    )  # fmt: skip
    lines = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    parsed = [(int(line.split("|")[1]), line.split("|")[2].rstrip()) for line in lines[1:]]
    top = sorted(parsed, reverse=True)[:8]
    return "\n".join(f"{micros / 1000:7.1f} ms cumulative  {name}" for micros, name in top)


if __name__ == "__main__":
    main()
