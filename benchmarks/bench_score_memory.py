"""Benchmark ``crossent score``'s peak memory against the size of the file, CSV and Parquet.

What is measured
    The peak resident memory (ru_maxrss) and the wall time of the real command

        .venv/bin/crossent score FILE --target label --json REPORT

    on predictions files of six sizes, from 1,000 rows (0.4 MB as CSV) to 3,000,000 rows
    (1.27 GB as CSV, 0.52 GB as Parquet), each as CSV and as Parquet, warm in the page cache.
    Streaming in constant memory shows as a flat line once the file fills the reader's window
    (CSV: about 33 blocks of 1 MiB read ahead; Parquet: about a page per column); the issue
    asked for a peak within 64 MiB of a small file's, for any size.

    ``--compare DIR`` also runs every file with the crossent sources in DIR (a tree with
    src/crossent, e.g. an older commit from ``git archive``) first on PYTHONPATH, in the same
    round-robin, so the two versions are measured on the same files, machine and load.

How it is counted
    Files, checks and counting are those of bench_score.py (the same generator, rows and
    launcher; every run's row count and mean NLL are checked). Each point is run --repeat
    times (default 2), round-robin over sources, formats and sizes; reported are the median
    and the largest peak, and the median wall time.

Usage:
    .venv/bin/python benchmarks/bench_score_memory.py             # about 4 minutes
    .venv/bin/python benchmarks/bench_score_memory.py --quick     # 1,000 to 100,000 rows
    git archive b718cb0 src | tar -x -C /tmp/before
    .venv/bin/python benchmarks/bench_score_memory.py --compare /tmp/before --compare-label b718cb0
    .venv/bin/python benchmarks/bench_score_memory.py --from-csv docs/benchmarks/score_memory.csv

Writes docs/benchmarks/score_memory.csv and docs/benchmarks/score_memory.png (peak memory
against file size); prints the markdown table.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import tempfile
from pathlib import Path

from bench_measures import add_csv_option, git_commit, log, results_path, write_csv
from bench_score import about, check_free_space, crossent_command, generate, score_once

SIZES = {f"{rows:,}": rows for rows in (1_000, 30_000, 100_000, 300_000, 1_000_000, 3_000_000)}
QUICK_SIZES = {f"{rows:,}": rows for rows in (1_000, 30_000, 100_000)}
DOCS = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
DEFAULT_CSV = DOCS / "score_memory.csv"
DEFAULT_PLOT = DOCS / "score_memory.png"


def measure(files: list, sources: dict[str, str | None], repeat: int, folder: Path) -> list[dict]:
    """Every file with every source, ``repeat`` times round-robin; one row per point."""
    runs: dict[tuple[str, str, str], list[dict]] = {}
    for turn in range(1, repeat + 1):
        log(f"repeat {turn}/{repeat}")
        for label, tree in sources.items():
            with _python_path(tree):
                for f in files:
                    log(f"  {label}:")
                    runs.setdefault((label, f.fmt, f.size), []).append(
                        score_once(f, "warm", folder / "report.json")
                    )
    rows = []
    for (label, fmt, size), measured in runs.items():
        f = next(f for f in files if (f.fmt, f.size) == (fmt, size))
        wall = statistics.median(r["wall_s"] for r in measured)
        rows.append(
            {
                "source": label,
                "format": fmt,
                "rows": f.rows,
                "file_mb": round(f.bytes / 1e6, 1),
                "peak_rss_mib": round(
                    statistics.median(r["maxrss_kib"] for r in measured) / 1024, 1
                ),
                "peak_rss_mib_max": round(max(r["maxrss_kib"] for r in measured) / 1024, 1),
                "wall_s": round(wall, 3),
                "rows_per_s": round(f.rows / wall),
                "other_load_median": round(statistics.median(r["other_load"] for r in measured), 2),
                "repeat": len(measured),
            }
        )
    return rows


class _python_path:
    """PYTHONPATH=TREE/src for the commands started in the block (None: this checkout)."""

    def __init__(self, tree: str | None) -> None:
        self.tree, self.before = tree, os.environ.get("PYTHONPATH")

    def __enter__(self) -> None:
        if self.tree is not None:
            os.environ["PYTHONPATH"] = str(Path(self.tree) / "src")

    def __exit__(self, *exc: object) -> None:
        if self.before is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = self.before


def markdown_table(rows: list[dict]) -> str:
    header = (
        "| source | format | rows | file MB | peak RSS MiB (max) | over the smallest | rows/s |"
    )
    lines = [header, "|" + "---|" * 7]
    for r in rows:
        smallest = min(
            (x for x in rows if (x["source"], x["format"]) == (r["source"], r["format"])),
            key=lambda x: int(x["rows"]),
        )
        growth = float(r["peak_rss_mib"]) - float(smallest["peak_rss_mib"])
        cells = [
            r["source"],
            r["format"],
            f"{int(r['rows']):,}",
            f"{float(r['file_mb']):,.1f}",
            f"{float(r['peak_rss_mib']):.0f} ({float(r['peak_rss_mib_max']):.0f})",
            f"+{growth:.0f}",
            f"{int(r['rows_per_s']):,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Peak memory against file size, one line per source and format, log x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7.5, 4.2))
    styles = {"csv": "o-", "parquet": "s--"}
    for colour, source in enumerate(dict.fromkeys(r["source"] for r in rows)):
        for fmt in ("csv", "parquet"):
            mine = sorted(
                (r for r in rows if (r["source"], r["format"]) == (source, fmt)),
                key=lambda r: float(r["file_mb"]),
            )
            if mine:
                axis.plot(
                    [float(r["file_mb"]) for r in mine],
                    [float(r["peak_rss_mib"]) for r in mine],
                    styles[fmt],
                    color=f"C{colour}",
                    label=f"{source}, {fmt.upper() if fmt == 'csv' else 'Parquet'}",
                )
    axis.set_xscale("log")
    axis.set(
        xlabel="file size, MB (log scale)",
        ylabel="peak resident memory, MiB",
        title="crossent score: peak memory against file size (median of runs)",
    )
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    log(f"wrote {path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1,000 to 100,000 rows")
    parser.add_argument("--repeat", type=int, default=2, help="runs of each point (default 2)")
    parser.add_argument("--dir", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--compare", type=Path, help="another source tree to measure too")
    parser.add_argument("--compare-label", default="before", help="its name in the results")
    parser.add_argument("--from-csv", type=Path, help="tabulate and plot recorded results")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="where the plot goes")
    add_csv_option(parser, DEFAULT_CSV)
    args = parser.parse_args(argv)
    args.csv = results_path(args, DEFAULT_CSV)
    if args.compare is not None and not (args.compare / "src" / "crossent").is_dir():
        parser.error(f"--compare {args.compare}: no src/crossent in it")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.from_csv is not None:
        with args.from_csv.open(newline="") as file:
            rows = list(csv.DictReader(file))
    else:
        rows = run(args)
    if args.plot is not None and not args.quick:
        plot(rows, args.plot)
    print(markdown_table(rows))


def run(args: argparse.Namespace) -> list[dict]:
    info = about()
    sizes = QUICK_SIZES if args.quick else SIZES
    sources: dict[str, str | None] = {git_commit(): None}
    if args.compare is not None:
        sources[args.compare_label] = str(args.compare)
    crossent_command()
    check_free_space(args.dir, sizes)
    folder = Path(tempfile.mkdtemp(prefix="crossent-bench-memory-", dir=args.dir))
    try:
        files = generate(folder, sizes)
        rows = measure(files, sources, args.repeat, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if args.csv is not None:
        write_csv(args.csv, rows, info)
    return rows


if __name__ == "__main__":
    main()
