"""Benchmark crossent.torch.cross_entropy against eager PyTorch, torch.compile and Liger-Kernel.

What is measured
    Forward + backward of the mean cross entropy of index targets: loss = f(logits, target);
    loss.backward(). The logits exist before the clock starts; the gradient is allocated by
    the call, as in training. Each provider is warmed up (torch.compile compiles there), then
    timed --repeat times; reported are the median and the 20th / 80th percentiles, and the
    time of the first warm-up call, the first call of its process: that one also pays for
    library start-up, compilation, and the first use of fresh memory.

    CPU (default): N = 4096, C = 32000, float32 — the shape of the issue's targets
    (≥ 10× eager F.cross_entropy, ≥ 5× torch.compile of it).
    GPU (--device cuda): bfloat16, N = 16384, C ∈ {32000, 128256}, and the copy bandwidth of
    the device measured in the same run; the bandwidth of a provider counts one read of the
    logits and one write of the gradient: 2 · N · C · 2 bytes / time.

Memory
    Each provider runs in its own process; "extra" is that process's peak memory during the
    timed calls (CPU: resident set size; GPU: torch.cuda.max_memory_allocated) minus the
    memory it held between calls, with the logits and targets, after the warm-up (see
    _harness.py). The gradient itself (N · C · itemsize) is the floor of "extra".

Usage:
    python benchmarks/bench_cross_entropy.py                # CPU → docs/benchmarks/*_cpu.csv
    python benchmarks/bench_cross_entropy.py --runs 5       # all of it five times over: a VM
                                                            # drifts; the ratios' median and range
    python benchmarks/bench_cross_entropy.py --device cuda  # GPU → docs/benchmarks/*_cuda.csv
    python benchmarks/bench_cross_entropy.py --quick         # small shapes, a smoke test
"""

from __future__ import annotations

import argparse
import csv
import functools
import statistics
from pathlib import Path

import torch
import torch.nn.functional as F

from _harness import (
    DOCS,
    about,
    emit,
    importable,
    percentiles,
    run_isolated,
    time_calls,
)
from bench_measures import add_csv_option, log, results_path, write_csv

PROVIDERS = ("crossent", "crossent-inplace", "eager", "compile", "liger")


def loss_function(provider: str):
    if provider in ("crossent", "crossent-inplace"):
        from crossent.torch import cross_entropy

        if provider == "crossent":
            return cross_entropy
        # the gradient is written over the logits: no fresh N × C buffer to fault in (the
        # logits then hold the last gradient, which changes nothing a softmax's cost depends on)
        return functools.partial(cross_entropy, inplace_backward=True)
    if provider == "eager":
        return F.cross_entropy
    if provider == "compile":
        return torch.compile(F.cross_entropy)
    from liger_kernel.transformers.functional import liger_cross_entropy

    return liger_cross_entropy


def measure(provider: str, device: str, rows: int, classes: int, dtype: str, repeat: int) -> dict:
    """Time one provider in this process; returns the timings and the memory."""
    torch.manual_seed(0)
    logits = torch.randn(rows, classes, device=device, dtype=getattr(torch, dtype))
    target = torch.randint(0, classes, (rows,), device=device)
    fn = loss_function(provider)
    timed = time_calls(
        lambda: logits.detach().requires_grad_(True),
        lambda x: fn(x, target).backward(),
        device,
        repeat,
    )
    return {"times": timed.times, "extra_mb": timed.extra_bytes / 2**20, "first": timed.first}


def copy_bandwidth(rows: int, classes: int, repeat: int) -> float:
    """Bytes moved per second by a device copy of the logits (read + write)."""
    x = torch.randn(rows, classes, device="cuda", dtype=torch.bfloat16)
    y = torch.empty_like(x)
    times = time_calls(lambda: None, lambda _: y.copy_(x), "cuda", repeat).times
    return 2 * x.numel() * x.element_size() / statistics.median(times)


def in_subprocess(provider: str, args: argparse.Namespace, rows: int, classes: int) -> dict | None:
    if provider == "liger" and not importable("liger_kernel"):
        log("  liger: skipped, liger_kernel is not importable")
        return None
    options = ["--device", args.device, "--rows", str(rows), "--classes", str(classes),
               "--dtype", args.dtype, "--repeat", str(args.repeat)]  # fmt: skip
    return run_isolated(__file__, provider, options)


def rows_for(args: argparse.Namespace) -> list[dict]:
    """Every provider at every shape, ``args.runs`` times over (each run its own row set)."""
    shapes = [(4096, 32000)] if args.device == "cpu" else [(16384, 32000), (16384, 128256)]
    if args.quick:
        shapes = [(256, 4000)]
    results = []
    for run in range(1, args.runs + 1):
        for rows, classes in shapes:
            copy = copy_bandwidth(rows, classes, args.repeat) if args.device == "cuda" else None
            measured = {}
            for provider in PROVIDERS:
                log(f"run {run}/{args.runs}, {rows} × {classes}: {provider}")
                outcome = in_subprocess(provider, args, rows, classes)
                if outcome is not None:
                    measured[provider] = outcome
            for provider in measured:
                row = summary_row(args, rows, classes, provider, measured, copy)
                results.append({"run": run, **row})
    return results


def across_runs(rows: list[dict]) -> str:
    """Each provider's speed-ups over the runs: their median and their range."""
    lines = ["| N × C | provider | runs | vs eager: median (range) | vs compile: median (range) |",
             "|" + "---|" * 5]  # fmt: skip
    for key in dict.fromkeys((r["rows"], r["classes"], r["provider"]) for r in rows):
        mine = [r for r in rows if (r["rows"], r["classes"], r["provider"]) == key]
        cells = []
        for anchor in ("eager", "compile"):
            ratios = [r[f"speedup_vs_{anchor}"] for r in mine if r[f"speedup_vs_{anchor}"] != ""]
            middle = f"{statistics.median(ratios):.2f}×" if ratios else ""
            cells.append(f"{middle} ({min(ratios)}–{max(ratios)})" if ratios else "")
        lines.append(f"| {key[0]:,} × {key[1]:,} | {key[2]} | {len(mine)} | {' | '.join(cells)} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Each provider's median time in every run (dots) and over the runs (bar), log scale,
    one panel per shape, with the median speed-ups against eager and torch.compile."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = list(dict.fromkeys((r["rows"], r["classes"]) for r in rows))
    figure, axes = plt.subplots(1, len(shapes), figsize=(7.5 * len(shapes), 3.6), squeeze=False)
    for axis, (n, c) in zip(axes[0], shapes, strict=True):
        mine = [r for r in rows if (r["rows"], r["classes"]) == (n, c)]
        providers = list(dict.fromkeys(r["provider"] for r in mine))[::-1]  # first on top
        for y, provider in enumerate(providers):
            theirs = [r for r in mine if r["provider"] == provider]
            times = [r["median_ms"] for r in theirs]
            colour = "C0" if provider.startswith("crossent") else "C7"
            axis.barh(y, statistics.median(times), color=colour, alpha=0.35, height=0.6)
            axis.plot(times, [y] * len(times), "o", color=colour, ms=4)
            ratios = [
                f"{statistics.median(r[f'speedup_vs_{a}'] for r in theirs):.1f}× {a}"
                for a in ("eager", "compile")
                if provider != a and all(r[f"speedup_vs_{a}"] != "" for r in theirs)
            ]
            axis.annotate(", ".join(ratios), (max(times), y), xytext=(6, 0), fontsize=8,
                          textcoords="offset points", va="center")  # fmt: skip
        axis.set_yticks(range(len(providers)), providers)
        axis.set_xscale("log")
        axis.set_xlim(right=axis.get_xlim()[1] * 4)  # room for the labels
        runs = len({r["run"] for r in mine})
        axis.set(xlabel="ms per forward + backward (dots: each run's median; bar: their median)",
                 title=f"Cross entropy, {n:,} × {c:,} {mine[0]['dtype']}, {runs} runs")  # fmt: skip
    first = rows[0]
    figure.suptitle(
        f"{first.get('device_name', '')}, {first.get('threads', '')} threads, torch "
        f"{first.get('torch', '')}, {first.get('git_commit', '')}",
        fontsize=8,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    log(f"wrote {path}")


def summary_row(
    args: argparse.Namespace,
    rows: int,
    classes: int,
    provider: str,
    measured: dict[str, dict],
    copy: float | None,
) -> dict:
    """One provider's line: times, speed-ups, memory, bandwidth."""
    median = {name: statistics.median(outcome["times"]) for name, outcome in measured.items()}
    _, low, high = percentiles(measured[provider]["times"])
    itemsize = torch.finfo(getattr(torch, args.dtype)).bits // 8
    traffic = 2 * rows * classes * itemsize  # one read of the logits, one write of the gradient
    versus = {
        f"speedup_vs_{anchor}": round(median[anchor] / median[provider], 2) if anchor in median
        else "" for anchor in ("eager", "compile")
    }  # fmt: skip
    return {
        "device": args.device, "rows": rows, "classes": classes, "dtype": args.dtype,
        "provider": provider, "median_ms": round(1e3 * median[provider], 3),
        "p20_ms": round(1e3 * low, 3), "p80_ms": round(1e3 * high, 3), **versus,
        "extra_memory_mb": round(measured[provider]["extra_mb"], 1),
        "gradient_mb": round(rows * classes * itemsize / 2**20, 1),
        "first_call_ms": round(1e3 * measured[provider]["first"], 1),
        "first_call_vs_eager": round(measured["eager"]["first"] / measured[provider]["first"], 2)
        if "eager" in measured else "",
        "gb_per_s": round(traffic / median[provider] / 1e9, 1),
        "share_of_copy_bandwidth": round(traffic / median[provider] / copy, 3) if copy else "",
        "copy_gb_per_s": round(copy / 1e9, 1) if copy else "",
    }  # fmt: skip


def markdown(rows: list[dict]) -> str:
    lines = ["| run | device | N × C | dtype | provider | median ms (p20–p80) | vs eager | vs "
             "compile | extra MB (gradient MB) | GB/s | of copy bw | first call ms (vs eager) |",
             "|" + "---|" * 12]  # fmt: skip
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['device']} | {r['rows']:,} × {r['classes']:,} | {r['dtype']} "
            f"| {r['provider']} "
            f"| {r['median_ms']} ({r['p20_ms']}–{r['p80_ms']}) | {r['speedup_vs_eager']}× "
            f"| {r['speedup_vs_compile']}× | {r['extra_memory_mb']} ({r['gradient_mb']}) "
            f"| {r['gb_per_s']} | {r['share_of_copy_bandwidth']} "
            f"| {r['first_call_ms']} ({r['first_call_vs_eager']}×) |"
        )
    return "\n".join(lines)


def _number(text: str) -> int | float | str:
    """A CSV cell as the int or float it was written from, else as it is."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 on the CPU, bfloat16 on CUDA")
    parser.add_argument("--repeat", type=int, default=None, help="timed calls (5 CPU, 20 GPU)")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--runs", type=int, default=1, help="measure everything this many times (a VM drifts)"
    )
    add_csv_option(parser, DOCS / "cross_entropy_<device>.csv")
    parser.add_argument(
        "--plot", type=Path, default=None,
        help="the PNG (default docs/benchmarks/cross_entropy_<device>.png; none with --quick)",
    )  # fmt: skip
    parser.add_argument(
        "--from-csv", type=Path, default=None,
        help="measure nothing: tabulate and plot the runs of this CSV instead",
    )  # fmt: skip
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--classes", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    args.repeat = args.repeat or (5 if args.device == "cpu" else 20)
    if args.one:
        emit(measure(args.one, args.device, args.rows, args.classes, args.dtype, args.repeat))
        return
    if args.from_csv is not None:
        with args.from_csv.open(newline="") as file:
            rows = [
                {key: _number(value) for key, value in row.items()} for row in csv.DictReader(file)
            ]
    else:
        machine = about(args.device)  # the same for every row: a git call and /proc, once
        rows = [{**row, **machine} for row in rows_for(args)]
        csv_path = results_path(args, DOCS / f"cross_entropy_{args.device}.csv")
        if csv_path is not None:
            write_csv(csv_path, rows, {})
    plot_path = args.plot or (None if args.quick else DOCS / f"cross_entropy_{args.device}.png")
    if plot_path is not None and importable("matplotlib"):  # the GPU machine may lack it
        plot(rows, plot_path)
    print(markdown(rows))
    if len({row["run"] for row in rows}) > 1:
        print(across_runs(rows))


if __name__ == "__main__":
    main()
