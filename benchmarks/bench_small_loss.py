"""Benchmark small losses: crossent.torch.cross_entropy against eager F.cross_entropy.

What is measured
    Forward and backward of the mean loss of float32 logits with index targets on the CPU, at
    (N, C) = 256 × 10, 4096 × 100 and 4096 × 1000: where a call's fixed costs (checks, the
    autograd Function, the dispatch) are most of it. Both providers run in the same process,
    interleaved: each round times ``--calls`` calls of one, then of the other, and the median
    over ``--rounds`` rounds is reported with the 20th and 80th percentiles of the rounds, so
    a busy machine's drift falls on both alike. ratio = crossent / eager (lower is better).

Usage:
    python benchmarks/bench_small_loss.py            # writes docs/benchmarks/small_loss.csv
    python benchmarks/bench_small_loss.py --quick    # a smoke test in seconds, no CSV
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_measures import add_csv_option, cpu_model, git_commit, log, results_path, write_csv
from crossent.torch import cross_entropy

SHAPES = ((256, 10), (4096, 100), (4096, 1000))
DEFAULT_CSV = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "small_loss.csv"
PROVIDERS: dict[str, Callable[..., torch.Tensor]] = {
    "crossent": cross_entropy,
    "eager": F.cross_entropy,
}


def step(loss: Callable[..., torch.Tensor], logits: torch.Tensor, target: torch.Tensor) -> None:
    """One forward and backward, from fresh leaf logits."""
    x = logits.detach().requires_grad_()
    loss(x, target).backward()


def time_calls(
    loss: Callable[..., torch.Tensor], logits: torch.Tensor, target: torch.Tensor, calls: int
) -> float:
    """Milliseconds per call over ``calls`` calls."""
    started = time.perf_counter()
    for _ in range(calls):
        step(loss, logits, target)
    return (time.perf_counter() - started) * 1e3 / calls


def measure(shape: tuple[int, int], rounds: int, calls: int) -> list[dict]:
    rows, classes = shape
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(rows, classes, generator=generator)
    target = torch.randint(0, classes, (rows,), generator=generator)
    for loss in PROVIDERS.values():  # warm-up: first calls allocate and load
        time_calls(loss, logits, target, max(1, calls // 4))
    times: dict[str, list[float]] = {name: [] for name in PROVIDERS}
    for _ in range(rounds):
        for name, loss in PROVIDERS.items():
            times[name].append(time_calls(loss, logits, target, calls))
    eager = statistics.median(times["eager"])
    results = []
    for name, values in times.items():
        quantiles = statistics.quantiles(values, n=5) if len(values) > 1 else [values[0]] * 4
        median = statistics.median(values)
        results.append({
            "rows": rows, "classes": classes, "provider": name, "median_ms": round(median, 4),
            "p20_ms": round(quantiles[0], 4), "p80_ms": round(quantiles[3], 4),
            "ratio_to_eager": round(median / eager, 3),
        })  # fmt: skip
        log(f"  {rows} × {classes} {name}: {median:.3f} ms ({median / eager:.2f}× eager)")
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--quick", action="store_true")
    add_csv_option(parser, DEFAULT_CSV)
    args = parser.parse_args(argv)
    rounds, calls = (2, 10) if args.quick else (args.rounds, args.calls)
    rows = [row for shape in SHAPES for row in measure(shape, rounds, calls)]
    path = results_path(args, DEFAULT_CSV)
    if path is not None and not args.quick:
        about = {"cpu": cpu_model(), "commit": git_commit(), "torch": torch.__version__,
                 "threads": str(torch.get_num_threads()), "rounds": str(rounds),
                 "calls": str(calls)}  # fmt: skip
        write_csv(path, rows, about)


if __name__ == "__main__":
    main()
