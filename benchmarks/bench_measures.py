"""Benchmark crossent's entropy, KL divergence and cross entropy against SciPy and torch.

What is measured
    The wall-clock time of one call that turns N distributions over M classes (the rows of an
    (N, M) array, each summing to 1) into N values in nats, for (N, M) = (1_000_000, 10) and
    (1_000, 100_000), in float32 and float64. The rows are softmax(normal logits), computed in
    the benchmark dtype, so they sum to 1 within that dtype's rounding (checked).

    NumPy side (NumPy arrays in, NumPy out); the anchor is SciPy:
        entropy        scipy.stats.entropy(p, axis=-1)
        kl_divergence  scipy.stats.entropy(p, q, axis=-1)
        cross_entropy  -np.sum(scipy.special.xlogy(p, q), axis=-1)
                       (SciPy has no cross entropy of two distributions; this is its closest:
                       the textbook formula on SciPy's ufunc with 0 · log 0 = 0)
    torch side (tensors in, tensors out); the anchor is plain torch:
        entropy        torch.special.entr(p).sum(-1)
        kl_divergence  F.kl_div(q.log(), p, reduction="none").sum(-1)
        cross_entropy  -(p * q.log()).sum(-1)
    crossent: entropy(p), kl_divergence(...) and cross_entropy(target_probs=p, pred_probs=q),
    with base=math.e (nats, like the anchors) and reduction="none", once with the default
    validate=True (the one the target "at least as fast as SciPy" is about) and once with
    validate=False.

How time is counted
    Each implementation is called once to warm up; that result is checked against SciPy's
    (rtol 1e-4 in float32, 1e-9 in float64), so that a fast wrong answer cannot win. Then each
    is called --repeat times, round-robin over the implementations of a case, so that drift of
    the machine touches all of them alike. A call is timed alone with time.perf_counter and
    includes all the caller waits for: conversion, validation, temporaries and the result.
    Reported: the median and the 20th/80th percentiles in milliseconds, and
    ratio = anchor median / median, so a ratio > 1 means faster than the anchor.

How bytes are counted
    input_mb is what a call must read: N · M · itemsize bytes for p, as much again for q (KL,
    cross entropy); gb_per_s = input bytes / median time, an effective bandwidth that leaves
    out temporaries and the output. Each input array is 40 MB (float32, N = 10^6) to 800 MB,
    larger than the 32 MiB L3 cache of the machine the published numbers come from, so every
    call streams its inputs from memory: these are cache-cold timings, not in-cache ones.

Usage:
    .venv/bin/python benchmarks/bench_measures.py                 # full run, writes the CSV
    .venv/bin/python benchmarks/bench_measures.py --quick         # small shapes, seconds
    .venv/bin/python benchmarks/bench_measures.py --repeat 9 --csv results.csv

Progress goes to stderr; the markdown table of results goes to stdout.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import gc
import hashlib
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy
import scipy.special
import scipy.stats
import torch
import torch.nn.functional as F

import crossent

FULL_SHAPES = ((1_000_000, 10), (1_000, 100_000))
QUICK_SHAPES = ((20_000, 10), (200, 1_000))
DTYPES = (torch.float32, torch.float64)
MEASURES = ("entropy", "kl_divergence", "cross_entropy")
DEFAULT_REPEAT = 5  # the full run takes about 4 minutes on 2 cores
DEFAULT_CSV = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "measures.csv"
RTOL = {torch.float32: 1e-4, torch.float64: 1e-9}  # our result against SciPy's
SEED = 20240601

OURS = "crossent"
OURS_NO_VALIDATE = "crossent validate=False"

Impl = Callable[[Any, Any], Any]  # (p, q) -> one value per row

SCIPY: dict[str, Impl] = {
    "entropy": lambda p, q: scipy.stats.entropy(p, axis=-1),
    "kl_divergence": lambda p, q: scipy.stats.entropy(p, q, axis=-1),
    "cross_entropy": lambda p, q: -np.sum(scipy.special.xlogy(p, q), axis=-1),
}

TORCH: dict[str, Impl] = {
    "entropy": lambda p, q: torch.special.entr(p).sum(-1),
    "kl_divergence": lambda p, q: F.kl_div(q.log(), p, reduction="none").sum(-1),
    "cross_entropy": lambda p, q: -(p * q.log()).sum(-1),
}


def ours(measure: str, validate: bool) -> Impl:
    """crossent's ``measure`` in nats, p the target (truth) and q the pred (model)."""
    if measure == "entropy":
        return lambda p, q: crossent.entropy(p, base=math.e, validate=validate)
    function = getattr(crossent, measure)
    return lambda p, q: function(target_probs=p, pred_probs=q, base=math.e, validate=validate)


@dataclass
class Case:
    """One measure on one batch, from one library: an anchor and crossent, on the same inputs."""

    measure: str
    shape: tuple[int, int]
    dtype: torch.dtype
    side: str  # "numpy" or "torch": the kind of array passed in and returned
    anchor: str  # "scipy" or "torch"

    def implementations(self) -> dict[str, Impl]:
        anchors = SCIPY if self.anchor == "scipy" else TORCH
        return {
            self.anchor: anchors[self.measure],
            OURS: ours(self.measure, validate=True),
            OURS_NO_VALIDATE: ours(self.measure, validate=False),
        }

    def input_bytes(self) -> int:
        arrays = 1 if self.measure == "entropy" else 2
        return arrays * math.prod(self.shape) * torch.finfo(self.dtype).bits // 8

    def label(self) -> str:
        return f"{self.measure} {self.shape} {dtype_name(self.dtype)} {self.side}"


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def distributions(shape: tuple[int, int], dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Rows of softmax(standard normal logits), computed in ``dtype`` and checked to sum to 1."""
    generator = torch.Generator().manual_seed(seed)
    probs = torch.softmax(torch.randn(shape, generator=generator, dtype=dtype), dim=-1)
    worst = float((probs.sum(dim=-1, dtype=torch.float64) - 1).abs().max())
    if worst > 100 * torch.finfo(dtype).eps:
        raise SystemExit(f"generated rows sum to 1 only within {worst:.1e}")
    log(f"  rows sum to 1 within {worst:.1e}")
    return probs


def time_round_robin(
    implementations: dict[str, Impl], inputs: tuple[Any, Any], repeat: int
) -> tuple[dict[str, list[float]], dict[str, np.ndarray]]:
    """Warm up each implementation once (keeping its result), then time ``repeat`` rounds."""
    results = {name: to_numpy(impl(*inputs)) for name, impl in implementations.items()}
    seconds: dict[str, list[float]] = {name: [] for name in implementations}
    gc.collect()
    for _ in range(repeat):
        for name, impl in implementations.items():
            start = time.perf_counter()
            impl(*inputs)
            seconds[name].append(time.perf_counter() - start)
    return seconds, results


def to_numpy(result: Any) -> np.ndarray:
    return result.numpy() if isinstance(result, torch.Tensor) else np.asarray(result)


def max_abs_diff(name: str, result: np.ndarray, reference: np.ndarray, rtol: float) -> float:
    """How far ``result`` is from SciPy's; exits if it is beyond ``rtol`` (a wrong answer)."""
    if result.shape != reference.shape or not np.allclose(result, reference, rtol, rtol):
        raise SystemExit(f"{name}: result differs from SciPy's beyond rtol {rtol:g}")
    return float(np.max(np.abs(result.astype(np.float64) - reference), initial=0.0))


def summarise(
    case: Case, seconds: dict[str, list[float]], results: dict[str, np.ndarray], reference: Any
) -> list[dict]:
    """One CSV row per implementation of ``case``: times, ratio to the anchor, error."""
    anchor_ms = 1000 * float(np.median(seconds[case.anchor]))
    rows = []
    for name, times in seconds.items():
        p20, median, p80 = (1000 * float(v) for v in np.percentile(times, [20, 50, 80]))
        error = max_abs_diff(name, results[name], reference, RTOL[case.dtype])
        rows.append(
            {
                "measure": case.measure,
                "n": case.shape[0],
                "m": case.shape[1],
                "dtype": dtype_name(case.dtype),
                "side": case.side,
                "implementation": name,
                "anchor": case.anchor,
                "median_ms": round(median, 2),
                "p20_ms": round(p20, 2),
                "p80_ms": round(p80, 2),
                "ratio_anchor_over_this": round(anchor_ms / median, 3),
                "input_mb": round(case.input_bytes() / 1e6, 1),
                "gb_per_s": round(case.input_bytes() / 1e9 / (median / 1000), 2),
                "max_abs_diff_vs_scipy": f"{error:.2e}",
                "repeat": len(times),
            }
        )
    timings = ", ".join(f"{r['implementation']} {r['median_ms']:.1f} ms" for r in rows)
    log(f"  {case.label()}: {timings}")
    return rows


def bench_batch(shape: tuple[int, int], dtype: torch.dtype, repeat: int) -> list[dict]:
    """Every measure, from NumPy and from torch, on one (N, M) batch of one dtype."""
    log(f"batch {shape} {dtype_name(dtype)}: generating p and q")
    p, q = distributions(shape, dtype, SEED), distributions(shape, dtype, SEED + 1)
    by_side = {"numpy": (p.numpy(), q.numpy()), "torch": (p, q)}  # the same memory
    rows = []
    for measure in MEASURES:
        reference = None  # SciPy's result, from the NumPy side's warm-up call
        for side, anchor in (("numpy", "scipy"), ("torch", "torch")):
            case = Case(measure, shape, dtype, side, anchor)
            seconds, results = time_round_robin(case.implementations(), by_side[side], repeat)
            reference = results["scipy"] if reference is None else reference
            rows += summarise(case, seconds, results, reference)
    return rows


def machine() -> dict[str, str]:
    """The machine and the library versions, repeated on every CSV row."""
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "torch_threads": str(torch.get_num_threads()),
        "l3_cache": l3_cache(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "crossent": crossent.__version__,
        "git_commit": git_commit(),
        "source_sha256": source_digest(),
        "date": datetime.date.today().isoformat(),
    }


def git_commit() -> str:
    """The commit of the imported crossent sources, '+dirty' when they differ from it."""
    package = Path(crossent.__file__).parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=package, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "diff", "--quiet", "HEAD", "--", "."], cwd=package, capture_output=True
        )
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.returncode else "")


def source_digest() -> str:
    """The first 12 hex digits of a SHA-256 over every .py file of the imported crossent."""
    root = Path(crossent.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:12]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def l3_cache() -> str:
    try:
        return Path("/sys/devices/system/cpu/cpu0/cache/index3/size").read_text().strip()
    except OSError:
        return "unknown"


def add_csv_option(parser: argparse.ArgumentParser, default: Path | str) -> None:
    """``--csv PATH``: where a benchmark writes its results; see :func:`results_path`."""
    parser.add_argument(
        "--csv",
        type=Path,
        default=None,
        help=f"where to write the results (default {default}; none with --quick)",
    )


def results_path(args: argparse.Namespace, default: Path) -> Path | None:
    """``--csv`` if given, else ``default``; nowhere for a ``--quick`` smoke run."""
    path: Path | None = args.csv or (None if args.quick else default)
    return path


def write_csv(path: Path, rows: list[dict], about: dict[str, str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    full = [{**row, **about} for row in rows]
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(full[0]))
        writer.writeheader()
        writer.writerows(full)
    log(f"wrote {path}")


def markdown_table(rows: list[dict]) -> str:
    """One line per measure, shape and dtype: median ms, and the ratio anchor / crossent."""
    header = (
        "| measure | N × M | dtype | SciPy ms | crossent ms (ratio) | validate=False ms (ratio) "
        "| torch ms | crossent ms (ratio) | validate=False ms (ratio) |"
    )
    lines = [header, "|" + "---|" * 9]
    index = {
        (r["measure"], r["n"], r["m"], r["dtype"], r["implementation"], r["side"]): r for r in rows
    }
    keys = dict.fromkeys((r["measure"], r["n"], r["m"], r["dtype"]) for r in rows)
    for measure, n, m, dtype in keys:
        cells = [measure, f"{n:,} × {m:,}", dtype]
        for side, anchor in (("numpy", "scipy"), ("torch", "torch")):
            cells.append(f"{index[measure, n, m, dtype, anchor, side]['median_ms']:.1f}")
            for name in (OURS, OURS_NO_VALIDATE):
                row = index[measure, n, m, dtype, name, side]
                cells.append(f"{row['median_ms']:.1f} ({row['ratio_anchor_over_this']:.2f}×)")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"small shapes {QUICK_SHAPES}")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, help="timed calls each")
    add_csv_option(parser, DEFAULT_CSV)
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    args.csv = results_path(args, DEFAULT_CSV)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    about = machine()
    log("machine: " + ", ".join(f"{k} {v}" for k, v in about.items()))
    shapes = QUICK_SHAPES if args.quick else FULL_SHAPES
    start = time.perf_counter()
    rows = [row for s in shapes for d in DTYPES for row in bench_batch(s, d, args.repeat)]
    log(f"done in {time.perf_counter() - start:.0f} s")
    if args.csv is not None:
        write_csv(args.csv, rows, about)
    print(markdown_table(rows))


if __name__ == "__main__":
    main()
