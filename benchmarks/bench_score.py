"""Benchmark ``crossent score``: throughput and peak memory on multi-gigabyte predictions files.

What is measured
    The wall time, CPU time and peak resident memory of the real command

        .venv/bin/crossent score FILE --target label --json REPORT

    run as a subprocess on predictions files of three sizes, each as CSV and as Parquet, that
    hold the same rows: 12,000,000 rows (a 5.1 GB CSV file), 1,200,000 rows (0.51 GB) and
    1,000 rows (the fixed cost: start-up, imports and the report). From these: rows/s and MB/s
    (file bytes / wall time), and MB/s after start-up (file bytes / (wall time − the 1,000-row
    file's wall time)). Constant memory shows as the same peak memory for all three sizes.

The files
    A label column "label" and 20 class columns "0".."19" of probabilities, each row a softmax
    of normal logits (standard deviation 2) and each label drawn from its own row, so the
    predictions are calibrated. They are written with pyarrow, the CSV with the shortest
    decimal that round-trips each float64 (up to 17 significant digits, about 423 bytes a row),
    the Parquet file with pyarrow's defaults (Snappy) in row groups of 400,000 rows. They go
    into a fresh folder under --dir (default: the system's temporary folder, not the
    repository), whose free space is checked first (about 8 GB is needed), and are deleted at
    the end. Generating them is not timed.

How it is counted
    Each run is started by a small launcher process that spawns the command and waits for it
    with os.wait4, which gives that one process's peak resident set size (ru_maxrss) and CPU
    time: a child forked from this large benchmark process would report this process's memory
    instead. Wall time is the launcher's time.perf_counter around spawn and wait, so it
    includes the interpreter's start-up and imports, as a user's command does. Every run is
    checked: the report's row count and mean NLL must equal those computed while generating
    the file (relative difference ≤ 1e-9), so a fast wrong answer cannot pass.
    Two page-cache states: "cold" evicts the file from the page cache before the run
    (fsync, then posix_fadvise DONTNEED), so it is read from disk; "warm" reads it once
    before the run. Runs go round-robin over files and states, --repeat times (default 3);
    reported are the median, min and max wall time and the median and largest peak memory
    (ru_maxrss: resident memory, file-backed pages included, page cache not). other_load
    is the CPU time other processes used during a run, in cores (0 on a quiet machine).

Usage:
    .venv/bin/python benchmarks/bench_score.py                 # full run, writes the CSV
    .venv/bin/python benchmarks/bench_score.py --quick         # 20,000 rows, warm, seconds
    .venv/bin/python benchmarks/bench_score.py --dir /scratch --cache warm --csv /tmp/score.csv

Progress goes to stderr; the markdown table of results goes to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

import crossent
from _load import LoadMeter
from bench_measures import (
    add_csv_option,
    cpu_model,
    git_commit,
    l3_cache,
    log,
    results_path,
    source_digest,
    write_csv,
)

CLASSES = [str(j) for j in range(20)]
TARGET = "label"
LOGIT_SCALE = 2.0
FULL_SIZES = {"tiny": 1_000, "small": 1_200_000, "large": 12_000_000}
QUICK_SIZES = {"tiny": 1_000, "large": 20_000}
CHUNK_ROWS = 400_000  # rows generated at a time; also the Parquet row-group size
FORMATS = ("csv", "parquet")
CACHES = ("cold", "warm")
BYTES_PER_ROW = {"csv": 430, "parquet": 180}  # upper estimates, for the free-space check
SEED = 20240601
DEFAULT_REPEAT = 3  # the full run takes about 7 minutes on 2 cores, 1 of it generating
REL_TOL = 1e-9
DEFAULT_CSV = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "score.csv"

# Spawns the command given as its arguments (stdout to /dev/null), waits for it and prints its
# wall time, exit code, peak RSS and CPU time as JSON. A small process, so that the rusage of
# its child is the command's own.
LAUNCHER = """
import json, os, sys, time
start = time.perf_counter()
pid = os.posix_spawn(
    sys.argv[1], sys.argv[1:], os.environ,
    file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)],
)
_, status, usage = os.wait4(pid, 0)
wall = time.perf_counter() - start
print(json.dumps({
    "wall_s": wall, "exit": os.waitstatus_to_exitcode(status), "maxrss_kib": usage.ru_maxrss,
    "cpu_s": usage.ru_utime + usage.ru_stime,
}))
"""


@dataclass
class PredictionsFile:
    fmt: str
    size: str
    path: Path
    rows: int
    nats: float = 0.0  # Σ −ln p(label), computed while generating
    bytes: int = 0

    def label(self) -> str:
        return f"{self.fmt} {self.size} ({self.rows:,} rows)"


def check_free_space(folder: Path, sizes: dict[str, int]) -> None:
    need = sum(rows * sum(BYTES_PER_ROW.values()) for rows in sizes.values())
    free = shutil.disk_usage(folder).free
    log(f"{folder}: {free / 1e9:.1f} GB free, about {need / 1e9:.1f} GB needed")
    if free < need + 1e9:
        raise SystemExit(f"not enough free space in {folder}; choose another --dir")


def generate(folder: Path, sizes: dict[str, int]) -> list[PredictionsFile]:
    """Write every size in every format from one stream of rows (see the module docstring)."""
    files = [
        PredictionsFile(fmt, size, folder / f"predictions-{rows}.{fmt}", rows)
        for fmt in FORMATS
        for size, rows in sizes.items()
    ]
    fields = [(TARGET, pa.string()), *((name, pa.float64()) for name in CLASSES)]
    schema = pa.schema(fields)
    writers = {id(f): new_writer(f, schema) for f in files}
    rng = np.random.default_rng(SEED)
    names = np.asarray(CLASSES)
    total = max(sizes.values())
    try:
        for start in range(0, total, CHUNK_ROWS):
            count = min(CHUNK_ROWS, total - start)
            logits = rng.standard_normal((count, len(CLASSES))) * LOGIT_SCALE
            logits -= logits.max(axis=1, keepdims=True)
            probs = np.exp(logits)
            probs /= probs.sum(axis=1, keepdims=True)
            uniform = rng.random((count, 1))
            labels = np.minimum((probs.cumsum(axis=1) < uniform).sum(axis=1), len(CLASSES) - 1)
            nats = -np.log(probs[np.arange(count), labels])
            columns = [pa.array(names[labels]), *(pa.array(column) for column in probs.T)]
            batch = pa.RecordBatch.from_arrays(columns, schema=schema)
            for f in files:
                if f.rows > start:
                    keep = min(count, f.rows - start)
                    writers[id(f)].write_batch(batch.slice(0, keep))
                    f.nats += float(nats[:keep].sum())
            log(f"  generated {start + count:,} / {total:,} rows")
    finally:
        for writer in writers.values():
            writer.close()
    for f in files:
        f.bytes = f.path.stat().st_size
        log(f"  {f.path.name}: {f.bytes / 1e6:,.1f} MB")
    return files


def new_writer(f: PredictionsFile, schema: pa.Schema) -> pa_csv.CSVWriter | pq.ParquetWriter:
    if f.fmt == "csv":
        return pa_csv.CSVWriter(f.path, schema)
    return pq.ParquetWriter(f.path, schema)


def set_cache(path: Path, cache: str) -> None:
    """Evict the file from the page cache (cold), or read it once into it (warm)."""
    if cache == "cold":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)
        return
    with path.open("rb", buffering=0) as file:
        while file.read(1 << 24):
            pass


def crossent_command() -> Path:
    command = Path(sys.executable).with_name("crossent")
    if not command.is_file():
        raise SystemExit(f"no crossent command beside {sys.executable}; install the package")
    return command


def score_once(f: PredictionsFile, cache: str, report: Path) -> dict:
    """Run ``crossent score`` on ``f`` once; check its answer; return the measurements."""
    set_cache(f.path, cache)
    report.unlink(missing_ok=True)  # score refuses to replace an output (no --force: older
    command = [str(crossent_command()), "score", str(f.path), "--target", TARGET]  # versions)
    command += ["--json", str(report)]
    with LoadMeter() as load:
        done = subprocess.run(
            [sys.executable, "-c", LAUNCHER, *command], capture_output=True, text=True
        )
    if done.returncode != 0:
        raise SystemExit(f"launcher failed: {done.stderr}")
    run = json.loads(done.stdout)
    if run["exit"] != 0:
        raise SystemExit(f"crossent score exited with {run['exit']}: {done.stderr}")
    scored = json.loads(report.read_text())
    expected = f.nats / f.rows
    if scored["examples"] != f.rows or not math.isclose(
        scored["mean_nll_nats"], expected, rel_tol=REL_TOL
    ):
        raise SystemExit(
            f"{f.label()}: crossent reports {scored['examples']:,} rows, mean NLL "
            f"{scored['mean_nll_nats']!r} nats; expected {f.rows:,} and {expected!r}"
        )
    run["other_load"] = load.cores
    run["mean_nll_bits"] = scored["mean_nll_bits"]
    log(
        f"  {f.label()}, {cache}: {run['wall_s']:.2f} s, peak {run['maxrss_kib'] / 1024:.0f} MiB, "
        f"CPU {run['cpu_s']:.1f} s, other load {load.cores:.2f}"
    )
    return run


def summarise(
    files: list[PredictionsFile], runs: dict[tuple[str, str, str], list[dict]]
) -> list[dict]:
    """One row per format, size and cache state."""
    medians = {key: statistics.median(r["wall_s"] for r in rs) for key, rs in runs.items()}
    rows = []
    for (fmt, size, cache), rs in runs.items():
        f = next(f for f in files if (f.fmt, f.size) == (fmt, size))
        wall = medians[fmt, size, cache]
        startup = medians.get((fmt, "tiny", cache))
        streaming = wall - startup if startup is not None and size != "tiny" else None
        rows.append(
            {
                "format": fmt,
                "size": size,
                "rows": f.rows,
                "file_mb": round(f.bytes / 1e6, 1),
                "cache": cache,
                "median_s": round(wall, 3),
                "min_s": round(min(r["wall_s"] for r in rs), 3),
                "max_s": round(max(r["wall_s"] for r in rs), 3),
                "rows_per_s": round(f.rows / wall),
                "mb_per_s": round(f.bytes / 1e6 / wall, 1),
                "mb_per_s_after_startup": round(f.bytes / 1e6 / streaming, 1)
                if streaming and streaming > 0
                else "",
                "peak_rss_mib": round(statistics.median(r["maxrss_kib"] for r in rs) / 1024, 1),
                "peak_rss_mib_max": round(max(r["maxrss_kib"] for r in rs) / 1024, 1),
                "cpu_s_median": round(statistics.median(r["cpu_s"] for r in rs), 2),
                "other_load_median": round(statistics.median(r["other_load"] for r in rs), 2),
                "mean_nll_bits": round(rs[0]["mean_nll_bits"], 6),
                "repeat": len(rs),
            }
        )
    return rows


def about() -> dict[str, str]:
    """The machine and the library versions, repeated on every CSV row."""
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "l3_cache": l3_cache(),
        "python": platform.python_version(),
        "pyarrow": pa.__version__,
        "numpy": np.__version__,
        "crossent": crossent.__version__,
        "git_commit": git_commit(),
        "source_sha256": source_digest(),
        "date": datetime.date.today().isoformat(),
    }


def markdown_table(rows: list[dict]) -> str:
    header = (
        "| format | rows | file MB | cache | wall s (min–max) | rows/s | MB/s "
        "| MB/s after start-up | peak RSS MiB (max) | CPU s |"
    )
    lines = [header, "|" + "---|" * 10]
    for r in rows:
        after = r["mb_per_s_after_startup"]
        cells = [
            r["format"],
            f"{r['rows']:,}",
            f"{r['file_mb']:,.1f}",
            r["cache"],
            f"{r['median_s']:.2f} ({r['min_s']:.2f}–{r['max_s']:.2f})",
            f"{r['rows_per_s']:,}",
            f"{r['mb_per_s']:.1f}",
            f"{after:.1f}" if after != "" else "",
            f"{r['peak_rss_mib']:.0f} ({r['peak_rss_mib_max']:.0f})",
            f"{r['cpu_s_median']:.1f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"tiny files {QUICK_SIZES}")
    parser.add_argument("--repeat", type=int, default=None, help="runs of each (default 3)")
    parser.add_argument(
        "--cache",
        choices=(*CACHES, "both"),
        default=None,
        help="page-cache state(s) (default both; warm with --quick)",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(tempfile.gettempdir()),
        help="where the files are written (default: the temporary folder)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    add_csv_option(parser, DEFAULT_CSV)
    args = parser.parse_args(argv)
    args.repeat = args.repeat or (1 if args.quick else DEFAULT_REPEAT)
    args.cache = args.cache or ("warm" if args.quick else "both")
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.csv = results_path(args, DEFAULT_CSV)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    info = about()
    log("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    sizes = QUICK_SIZES if args.quick else FULL_SIZES
    caches = CACHES if args.cache == "both" else (args.cache,)
    crossent_command()
    check_free_space(args.dir, sizes)
    folder = Path(tempfile.mkdtemp(prefix="crossent-bench-score-", dir=args.dir))
    try:
        log(f"generating into {folder}")
        started = time.perf_counter()
        files = generate(folder, sizes)
        log(f"  generated in {time.perf_counter() - started:.0f} s")
        started = time.perf_counter()
        runs: dict[tuple[str, str, str], list[dict]] = {
            (f.fmt, f.size, cache): [] for f in files for cache in caches
        }
        for repeat in range(1, args.repeat + 1):
            log(f"repeat {repeat}/{args.repeat}")
            for cache in caches:
                for f in files:
                    runs[f.fmt, f.size, cache].append(score_once(f, cache, folder / "report.json"))
        log(f"scored in {time.perf_counter() - started:.0f} s")
    finally:
        if args.keep:
            log(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)
            log(f"deleted {folder}")
    rows = summarise(files, runs)
    if args.csv is not None:
        write_csv(args.csv, rows, info)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
