"""Benchmark `crossent text`: a byte model trained on the CPU against gzip, bzip2, xz and zstd.

Corpus (nothing downloaded)
    The .py files of the CPython standard library this Python ships
    (``sysconfig.get_paths()["stdlib"]``), without site-packages and without the test suites
    (any folder named test, tests or idle_test), sorted by their path relative to the library.
    Every 10th file (the 10th, 20th, ...) is held out; the rest, joined in that order, is the
    training text. The held-out files, joined in the same way, are the held-out text.

What is measured (each step runs the real command in a subprocess, with a fixed thread count)
    1. `crossent text train train.txt --held-out-file held-out.txt --minutes M`: held-out bits
       per byte every --eval-seconds (the float network on the first 256 KiB of held-out
       text), for the plot of bits per byte against training minutes.
    2. `crossent text score held-out.txt`: the trained (integer) model's bits per byte on all
       of the held-out text, and gzip -9, bzip2 -9, xz -9 and zstd -19 on the same bytes.
    3. `crossent text compress` and `decompress` of the held-out text: wall time (the whole
       command, start-up and model loading included) and bytes per second; the round trip is
       checked byte for byte.

Usage:
    python benchmarks/bench_text.py --minutes 15 --threads 1     # the run in docs/benchmarks.md
    python benchmarks/bench_text.py --minutes 0.5 --quick         # a smoke test in a minute
Writes docs/benchmarks/text.csv, text_history.csv and text_bits_per_byte.png (not with --quick).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import torch

import crossent
from bench_measures import cpu_model, git_commit, log

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
CROSSENT = [sys.executable, "-m", "crossent"]
SUITES = {"test", "tests", "idle_test"}


def corpus_files() -> list[Path]:
    """The standard library's .py files, test suites left out, sorted by relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if "site-packages" in parts or SUITES & set(parts[:-1]):
            continue
        found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def write_corpus(work: Path, quick: bool) -> tuple[Path, Path, int]:
    files = corpus_files()
    if quick:
        files = files[:60]
    train = [p for i, p in enumerate(files) if i % 10 != 9]
    held = [p for i, p in enumerate(files) if i % 10 == 9]
    (work / "train.txt").write_bytes(b"".join(p.read_bytes() for p in train))
    (work / "held-out.txt").write_bytes(b"".join(p.read_bytes() for p in held))
    (work / "held-out-files.txt").write_text("\n".join(str(p) for p in held) + "\n")
    return work / "train.txt", work / "held-out.txt", len(files)


def crossent_command(arguments: list[str], threads: int) -> float:
    """Run `crossent ARGS` with ``threads`` threads; its wall time in seconds."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    environment["OPENBLAS_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    done = subprocess.run([*CROSSENT, *arguments], env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"crossent {' '.join(arguments)} failed:\n{done.stderr}")
    log(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-seconds", type=float, default=60.0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/crossent-bench-text"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    train, held, count = write_corpus(args.work, args.quick)
    log(f"corpus: {count} files; train {train.stat().st_size:,} bytes, held out "
        f"{held.stat().st_size:,}")  # fmt: skip
    model = args.work / "model"
    threads = ["--threads", str(args.threads)]
    train_seconds = crossent_command(
        ["text", "train", str(train), "--held-out-file", str(held), "--out", str(model),
         "--minutes", str(args.minutes), "--eval-seconds", str(args.eval_seconds), "--force",
         *threads],
        args.threads,
    )  # fmt: skip
    scored = args.work / "score.json"
    score_seconds = crossent_command(
        ["text", "score", str(held), "--model", str(model), "--json", str(scored), "--force"],
        args.threads,
    )
    packed, back = args.work / "held-out.xent", args.work / "held-out.back"
    compress_seconds = crossent_command(
        ["text", "compress", str(held), "--model", str(model), "-o", str(packed), "--force"],
        args.threads,
    )
    decompress_seconds = crossent_command(
        ["text", "decompress", str(packed), "--model", str(model), "-o", str(back), "--force"],
        args.threads,
    )
    if back.read_bytes() != held.read_bytes():
        raise SystemExit("the round trip did not give the held-out text back")
    figures = json.loads(scored.read_text())
    card = json.loads((model / "crossent-text-model.json").read_text())
    history = json.loads((model / "history.json").read_text())
    row = result_row(figures, card, packed, (train_seconds, score_seconds, compress_seconds,
                                             decompress_seconds), args)  # fmt: skip
    print(json.dumps(row, indent=2))
    if not args.quick:
        write(row, history, figures)


def result_row(
    figures: dict, card: dict, packed: Path, seconds: tuple[float, ...], args: argparse.Namespace
) -> dict:
    size = figures["bytes"]
    _, score_s, compress_s, decompress_s = seconds
    row = {
        "held_out_bytes": size,
        "train_bytes": card["training"]["train_bytes"],
        "training_minutes": round(card["training"]["seconds"] / 60, 2),
        "training_steps": card["training"]["steps"],
        "model_bits_per_byte": round(figures["bits_per_byte"], 4),
        **{
            f"{name.split()[0]}_bits_per_byte": round(found["bits_per_byte"], 4)
            for name, found in figures["compressors"].items()
            if found["bits_per_byte"] is not None
        },
        "compressed_file_bits_per_byte": round(8 * packed.stat().st_size / size, 4),
        "score_seconds": round(score_s, 1),
        "compress_seconds": round(compress_s, 1),
        "decompress_seconds": round(decompress_s, 1),
        "compress_bytes_per_s": round(size / compress_s),
        "decompress_bytes_per_s": round(size / decompress_s),
        "model_file_bytes": sum(p.stat().st_size for p in (args.work / "model").iterdir()),
        "threads": args.threads,
        "cpu": cpu_model(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "crossent": crossent.__version__,
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
    }
    return row


def write(row: dict, history: list[dict], figures: dict) -> None:
    with (DOCS / "text.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    with (DOCS / "text_history.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    plot(history, figures, DOCS / "text_bits_per_byte.png")


def plot(history: list[dict], figures: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    points = [h for h in history if h.get("held_out_bits_per_byte") is not None][1:]
    axes.plot(
        [h["seconds"] / 60 for h in points],
        [h["held_out_bits_per_byte"] for h in points],
        marker="o",
        label="crossent byte model (held-out text)",
    )
    for name, found in figures["compressors"].items():
        if found["bits_per_byte"] is not None:
            axes.axhline(found["bits_per_byte"], linestyle="--", linewidth=1, color="grey")
            axes.annotate(name, (0, found["bits_per_byte"]), fontsize=8, va="bottom")
    axes.set_xlabel("training minutes (CPU, 1 thread)")
    axes.set_ylabel("bits per byte")
    axes.set_title("Held-out CPython standard library source")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
