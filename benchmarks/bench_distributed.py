"""Benchmark crossent's multi-process features on the CPU: vocabulary parallelism, data parallelism.

What is measured
    1. Vocabulary-parallel cross entropy, forward + backward. Mean loss of float32 logits with
       index targets, N = 4096 rows, C = 32000 and 128256 classes, on P = 1, 2, 4 processes
       joined by gloo (crossent.torch.distributed.launch; each worker gets cpu_count // P torch
       threads, at least 1). Each rank generates its own contiguous slice of the classes, C / P
       columns, from a seed, in the worker: nothing large travels through pickle. Each method
       runs in its own launch (fresh workers, so one method's gigabytes of allocations do not
       shape the next one's page faults), one after the other in one run:

           single      crossent.torch.cross_entropy of the full N × C logits (P = 1 only)
           crossent    crossent.torch.distributed.vocab_parallel_cross_entropy of the slice:
                       one MAX and one SUM all-reduce per call, 3 numbers per row
           all-gather  the naive baseline: all_gather the slices on every rank, concatenate,
                       crossent.torch.cross_entropy of the full logits on every rank, keep this
                       rank's slice of the gradient (a contiguous copy, as a model would need)

       Every call gets a fresh leaf tensor and allocates its gradient, as in training. Before
       each call the ranks meet at a barrier; each rank times its call with perf_counter, and
       the call's time is the slowest rank's (max over ranks). --warmup calls, then --repeat
       timed ones: the median and the 20th / 80th percentiles of those per-call maxima.
       "in collectives" is the time a rank spent inside all_reduce / all_gather (waiting for
       the other ranks included), mean over ranks, median over calls.

       Bytes are counted, not computed, by wrapping torch.distributed.all_reduce and
       all_gather in the workers (as tests/test_distributed.py does): the bytes of the tensors
       a rank puts into each kind of collective, per row, and for all_gather also the bytes it
       gets back from the other ranks. crossent's 16-byte all_gather per call (every rank's
       slice width and row count) shows as 16 / N bytes per row.

       "one all-reduce alone" is the latency of the all-reduce of all rows' (Σexp, x_y),
       timed 100 times in a row after the crossent calls, mean over ranks.

       Checked: crossent's loss equals the all-gather baseline's on the same slices (rtol
       1e-5), and every rank gets the same loss. The all-gather baseline is skipped (and
       logged) where its estimated memory exceeds 80% of MemAvailable: at C = 128256 and P = 4
       the ranks would hold about 20 GB together.

    2. Data-parallel SGD (crossent.classifier.parallel.train_data_parallel) on P = 1, 2, 4
       processes: an MLP with hidden layers [256, 256] on a synthetic data set of 120,000 rows
       × 128 features, 32 classes (standard normal features, labels from a random linear-
       softmax teacher), 4 epochs (--epochs), batch 256 and, to show where the overhead per
       step stops mattering, batch 2048. Seconds per epoch come from the parent's clock at
       each epoch's report from rank 0: the median over epochs 2.. (epoch 1 also pays start-
       up), and the wall time of the whole call (workers started, data pickled, weights
       returned). The training losses are compared with the 1-process run's (epoch 1 and
       final, relative; the target is 1e-5), next to a control: 1 process again with every
       initial weight multiplied by 1 + 2^-23, a change the size of float32 rounding.
       Beforehand, on P = 1, 2, 4 fresh workers: the latency of one all-reduce of as many
       float32 numbers as the model has parameters (what DistributedDataParallel sums each
       step, in one bucket) and of one number (the batch loss, summed each step), alone.

    The machine's cores are shared between the P workers: with 2 cores, P = 4 oversubscribes.
    other_load in the CSV is the CPU time other processes used during a case, in cores (from
    /proc/stat less this process's, the fork server's and its reaped workers' CPU time).

Usage:
    .venv/bin/python benchmarks/bench_distributed.py          # minutes; writes the CSV and the PNG
    .venv/bin/python benchmarks/bench_distributed.py --quick  # seconds; a CSV only with --csv
    .venv/bin/python benchmarks/bench_distributed.py --classes 32000 --repeat 9 --csv /tmp/d.csv

Progress goes to stderr; the markdown tables of results go to stdout.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import multiprocessing.forkserver
import os
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from _harness import DOCS, about, percentiles
from _load import _busy_seconds
from bench_measures import add_csv_option, log, results_path, write_csv

ROWS = 4096
FULL_CLASSES = (32000, 128256)
PROCESSES = (1, 2, 4)
SEED = 20261128
CHECK_RTOL = 1e-5
LATENCY_CALLS = 100  # all-reduces timed alone
MEMORY_SHARE = 0.8  # of MemAvailable the all-gather baseline may plan to use
# training: rows, features, classes, hidden, batch sizes, epochs
TRAIN_FULL = (120_000, 128, 32, [256, 256], (256, 2048), 4)
TRAIN_QUICK = (4_000, 32, 8, [64, 64], (256,), 3)
LOSS_RTOL = 1e-5  # the final training loss against 1 process's


# --- in the workers ---------------------------------------------------------------------


class Collectives:
    """Wraps torch.distributed.all_reduce / all_gather: bytes in and out, time inside."""

    def __init__(self) -> None:
        self.reset()
        self._all_reduce, self._all_gather = dist.all_reduce, dist.all_gather
        dist.all_reduce, dist.all_gather = self.all_reduce, self.all_gather  # type: ignore[assignment]

    def reset(self) -> None:
        self.reduce_bytes = self.gather_in_bytes = self.gather_out_bytes = 0
        self.calls = 0
        self.seconds = 0.0

    def all_reduce(self, tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        self.reduce_bytes += tensor.numel() * tensor.element_size()
        return self._timed(self._all_reduce, tensor, *args, **kwargs)

    def all_gather(self, outputs: list[torch.Tensor], tensor: torch.Tensor, *args, **kwargs):
        self.gather_in_bytes += tensor.numel() * tensor.element_size()
        self.gather_out_bytes += sum(t.numel() * t.element_size() for t in outputs) - (
            tensor.numel() * tensor.element_size()
        )  # what the other ranks' slices fill in
        return self._timed(self._all_gather, outputs, tensor, *args, **kwargs)

    def _timed(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        start = time.perf_counter()
        try:
            return function(*args, **kwargs)
        finally:
            self.seconds += time.perf_counter() - start


def _slices(classes: int, world: int) -> list[int]:
    """Class boundaries of the ranks' contiguous slices, as even as can be."""
    return [classes * r // world for r in range(world + 1)]


def _loss_rank(
    rank: int, world: int, rows: int, classes: int, method: str, repeat: int, warmup: int
) -> dict[str, Any]:
    """In a worker: time ``method`` on this rank's slice; per-call seconds, bytes, the loss."""
    from crossent.torch import cross_entropy
    from crossent.torch.distributed import vocab_parallel_cross_entropy

    cuts = _slices(classes, world)
    lo, hi = cuts[rank], cuts[rank + 1]
    generator = torch.Generator().manual_seed(SEED + 1000 * world + rank)
    local = torch.randn(rows, hi - lo, generator=generator)
    target = torch.randint(0, classes, (rows,), generator=torch.Generator().manual_seed(SEED))
    collectives = Collectives()

    def crossent_call() -> float:
        x = local.detach().requires_grad_(True)
        loss = vocab_parallel_cross_entropy(x, target)
        loss.backward()
        return float(loss.detach())

    def all_gather_call() -> float:
        parts = [torch.empty_like(local) for _ in range(world)]
        dist.all_gather(parts, local.contiguous())
        full = torch.cat(parts, dim=1).requires_grad_(True)
        del parts
        loss = cross_entropy(full, target)
        loss.backward()
        grad = full.grad[:, lo:hi].contiguous()  # type: ignore[index]  # this rank's, kept
        del full
        assert grad.shape == local.shape
        return float(loss.detach())

    def single_call() -> float:  # world 1 only: local is the full matrix
        x = local.detach().requires_grad_(True)
        loss = cross_entropy(x, target)
        loss.backward()
        return float(loss.detach())

    call = {"single": single_call, "crossent": crossent_call, "all-gather": all_gather_call}[method]
    out: dict[str, Any] = {"times": [], "comm": [], "threads": torch.get_num_threads()}
    for round_ in range(warmup + repeat):
        dist.barrier()
        collectives.reset()
        start = time.perf_counter()
        out["loss"] = call()
        seconds = time.perf_counter() - start
        if round_ == 0:  # the bytes of one call, per row
            out["bytes"] = (
                collectives.reduce_bytes / rows,
                collectives.gather_in_bytes / rows,
                collectives.gather_out_bytes / rows,
                collectives.calls,
            )
        if round_ >= warmup:
            out["times"].append(seconds)
            out["comm"].append(collectives.seconds)
    if method == "crossent":  # the all-reduce of every row's (Σexp, x_y), alone: its latency
        sums = torch.zeros(rows, 2)
        for _ in range(10):
            dist.all_reduce(sums)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(LATENCY_CALLS):
            dist.all_reduce(sums)
        out["all_reduce_us"] = 1e6 * (time.perf_counter() - start) / LATENCY_CALLS
    return out


def _latency_rank(rank: int, world: int, sizes: list[int], calls: int) -> list[float]:
    """In a worker: seconds of one all-reduce of each size (float32 numbers), alone."""
    seconds = []
    for size in sizes:
        tensor = torch.zeros(size)
        for _ in range(5):
            dist.all_reduce(tensor)
        dist.barrier()
        start = time.perf_counter()
        for _ in range(calls):
            dist.all_reduce(tensor)
        seconds.append((time.perf_counter() - start) / calls)
    return seconds


# --- in the parent ----------------------------------------------------------------------


class Load:
    """CPU time other processes used while a block ran, in cores. Our workers are children of
    multiprocessing's fork server, not of this process, so its CPU time and its reaped
    children's (from /proc/PID/stat) count as ours too."""

    def __enter__(self) -> Load:
        self._start = (_busy_seconds(), _own_seconds(), time.perf_counter())
        return self

    def __exit__(self, *exc: object) -> None:
        busy, own, wall = _busy_seconds(), _own_seconds(), time.perf_counter()
        other = (busy - self._start[0]) - (own - self._start[1])
        self.cores = max(0.0, other / (wall - self._start[2]))


def _own_seconds() -> float:
    times = os.times()
    total = times.user + times.system + times.children_user + times.children_system
    pid = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
    if pid:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError):
            pass
    return total


def _available_bytes() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return float(line.split()[1]) * 1024
    return math.inf


def _gather_peak_bytes(rows: int, classes: int, world: int) -> float:
    """Rough peak of one all-gather call on all ranks together: per rank its slice, the
    gathered parts and their concatenation, then the full gradient and the kept slice."""
    full = rows * classes * 4
    return world * max(full / world + 2 * full, full / world + 2 * full + full / world)


def bench_loss(args: argparse.Namespace) -> list[dict]:
    from crossent.torch.distributed import WorkerError, launch

    results = []
    for classes in args.classes:
        for world in args.processes:
            methods = (["single"] if world == 1 else []) + ["crossent", "all-gather"]
            need = _gather_peak_bytes(args.rows, classes, world)
            if need > MEMORY_SHARE * _available_bytes():
                free = _available_bytes()
                log(f"  all-gather skipped at C = {classes}, P = {world}: needs about "
                    f"{need / 1e9:.1f} GB, {free / 1e9:.1f} GB available")  # fmt: skip
                methods.remove("all-gather")
            measured = {}
            for method in methods:
                log(f"loss: {args.rows} × {classes}, {world} processes: {method}")
                try:
                    with Load() as load:
                        ranks = launch(
                            _loss_rank,
                            world,
                            args=(args.rows, classes, method, args.repeat, args.warmup),
                            timeout=900,
                        )
                except WorkerError as error:  # a rank killed for memory, say: no row
                    log(f"  {method} failed: {str(error).splitlines()[0]}")
                    continue
                measured[method] = (ranks, load.cores)
            results += _loss_rows(args, classes, world, measured)
    single = {r["classes"]: r["median_ms"] for r in results if r["method"] == "single"}
    for r in results:
        r["vs_single"] = round(single[r["classes"]] / r["median_ms"], 2) if r["classes"] in (
            single
        ) else ""  # fmt: skip
    return results


def _loss_rows(
    args: argparse.Namespace, classes: int, world: int, measured: dict[str, tuple[list, float]]
) -> list[dict]:
    """One row per method; the slowest rank's time per call, then the median over calls."""
    rows = []
    for method, (ranks, load) in measured.items():
        per_call = [max(times) for times in zip(*(r["times"] for r in ranks), strict=True)]
        comm = [statistics.mean(c) for c in zip(*(r["comm"] for r in ranks), strict=True)]
        median, low, high = percentiles(per_call)
        losses = [r["loss"] for r in ranks]
        if max(losses) - min(losses) > CHECK_RTOL * abs(max(losses)):
            raise SystemExit(f"{method}: the ranks' losses differ: {sorted(losses)}")
        reduce_b, gather_in_b, gather_out_b, count = ranks[0]["bytes"]
        latency = [r["all_reduce_us"] for r in ranks if "all_reduce_us" in r]
        rows.append({
            "part": "loss", "rows": args.rows, "classes": classes, "dtype": "float32",
            "processes": world, "threads_per_process": ranks[0]["threads"], "method": method,
            "median_ms": round(1e3 * median, 1), "p20_ms": round(1e3 * low, 1),
            "p80_ms": round(1e3 * high, 1),
            "in_collectives_ms": round(1e3 * statistics.median(comm), 1),
            "collective_calls": count,
            "all_reduce_alone_us": round(statistics.mean(latency)) if latency else "",
            "all_reduce_bytes_per_row": round(reduce_b, 3),
            "all_gather_sent_bytes_per_row": round(gather_in_b, 3),
            "all_gather_received_bytes_per_row": round(gather_out_b, 3),
            "loss": round(losses[0], 6), "other_load": round(load, 2),
        })  # fmt: skip
    if "all-gather" in measured and "crossent" in measured:
        ours, theirs = measured["crossent"][0][0]["loss"], measured["all-gather"][0][0]["loss"]
        if not math.isclose(ours, theirs, rel_tol=CHECK_RTOL):
            raise SystemExit(f"C = {classes}, P = {world}: crossent {ours} ≠ all-gather {theirs}")
    return rows


def synthetic_data(rows: int, features: int, classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Standard normal features; labels drawn from a random linear-softmax teacher."""
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal((rows, features)).astype(np.float32)
    teacher = rng.normal(0.0, 3.0 / math.sqrt(features), (features, classes))
    z = x @ teacher
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    y = (p.cumsum(axis=1) > rng.random((rows, 1))).argmax(axis=1)
    return x, y.astype(np.int64)


def bench_train(args: argparse.Namespace) -> list[dict]:
    from crossent.classifier.model import ModelCard, SoftmaxClassifier, standardisation
    from crossent.classifier.parallel import train_data_parallel
    from crossent.classifier.train import SGDOptions

    n, d, m, hidden, batches, epochs = TRAIN_QUICK if args.quick else TRAIN_FULL
    epochs = args.epochs or epochs
    x, y = synthetic_data(n, d, m)
    mean, scale = standardisation(x)
    card = ModelCard([str(c) for c in range(m)], [f"x{i}" for i in range(d)], "y", hidden,
                     mean, scale)  # fmt: skip
    from crossent.torch.distributed import launch

    parameters = sum(p.numel() for p in SoftmaxClassifier(card, seed=0).parameters())
    alone = {  # one all-reduce of the gradient's size, and of the loss (1 number), in seconds
        world: launch(_latency_rank, world, args=([parameters, 1], LATENCY_CALLS // 2))[0]
        for world in args.processes
    }
    results = []
    for batch in batches:
        options = SGDOptions(epochs=epochs, batch_size=batch, seed=0)
        runs = [(world, False) for world in args.processes] + [(1, True)]  # then the control
        for world, nudged in runs:
            control = ", weights nudged" if nudged else ""
            log(f"training: {n} × {d}, {m} classes, hidden {hidden}, batch {batch}, "
                f"{epochs} epochs, {world} processes{control}")  # fmt: skip
            model = SoftmaxClassifier(card, seed=0)
            if nudged:  # every initial weight times (1 + 2^-23): a rounding-sized change
                with torch.no_grad():
                    for parameter in model.parameters():
                        parameter.mul_(1 + 2**-23)
            stamps: list[float] = []  # the parent's clock at each epoch's report
            with Load() as load:
                start = time.perf_counter()
                history = train_data_parallel(
                    model, x, y, options, processes=world, timeout=1200,
                    on_epoch=functools.partial(_stamp, stamps),
                )  # fmt: skip
                wall = time.perf_counter() - start
            epoch_s = [b - a for a, b in itertools.pairwise(stamps)]
            results.append({
                "part": "train", "rows": n, "features": d, "classes": m,
                "hidden": "x".join(map(str, hidden)), "batch": batch, "epochs": epochs,
                "processes": world,
                "threads_per_process": max(1, (os.cpu_count() or 1) // world),
                "method": "train_data_parallel" + (", weights × (1 + 2^-23)" if nudged else ""),
                "median_ms": round(1e3 * statistics.median(epoch_s), 1) if epoch_s else "",
                "first_epoch_ms": round(1e3 * (stamps[0] - start), 1),
                "wall_ms": round(1e3 * wall, 1),
                "steps_per_epoch": math.ceil(n / batch), "parameters": parameters,
                "grad_all_reduce_alone_ms": round(1e3 * alone[world][0], 3),
                "loss_all_reduce_alone_ms": round(1e3 * alone[world][1], 3),
                "epoch1_train_bits": history.train_bits[0],
                "final_train_bits": history.train_bits[-1], "other_load": round(load.cores, 2),
            })  # fmt: skip
        _compare_to_one_process([r for r in results if r["batch"] == batch])
    return results


def _stamp(stamps: list[float], *epoch: object) -> None:
    stamps.append(time.perf_counter())


def _compare_to_one_process(runs: list[dict]) -> None:
    """Speed-up and loss differences against the first 1-process run of the same batch."""
    base = runs[0]
    for r in runs:
        r["speedup_vs_1"] = round(base["median_ms"] / r["median_ms"], 2) if r["median_ms"] else ""
        for key in ("epoch1", "final"):
            r[f"{key}_rel_diff_vs_1"] = abs(r[f"{key}_train_bits"] / base[f"{key}_train_bits"] - 1)
        if r["final_rel_diff_vs_1"] > LOSS_RTOL:
            log(f"  {r['processes']} processes ({r['method']}): final training loss "
                f"{r['final_train_bits']:.8f} bits differs from 1 process's "
                f"{base['final_train_bits']:.8f} by {r['final_rel_diff_vs_1']:.1e} relative, "
                f"more than {LOSS_RTOL:g}")  # fmt: skip


def computed_volume() -> list[dict]:
    """Bytes per row each rank receives, computed from the formulas (not measured)."""
    table = []
    for classes in FULL_CLASSES:
        for dtype, size in (("bf16", 2), ("fp32", 4)):
            for world in (2, 8):
                table.append({
                    "classes": classes, "dtype": dtype, "processes": world,
                    # statistics are float32 for bf16 and fp32 logits: 3 numbers, 4 smoothed
                    "crossent": 3 * 4, "crossent_smoothed": 4 * 4,
                    "all_gather": (world - 1) * classes * size // world,
                })  # fmt: skip
    return table


def markdown(loss: list[dict], train: list[dict]) -> str:
    lines = ["| C | P (threads each) | method | median ms (p20–p80) | vs single "
             "| in collectives ms | collective calls | one all-reduce alone µs "
             "| all-reduce B/row | all-gather sent / received B/row |",
             "|" + "---|" * 10]  # fmt: skip
    for r in loss:
        lines.append(
            f"| {r['classes']:,} | {r['processes']} ({r['threads_per_process']}) | {r['method']} "
            f"| {r['median_ms']} ({r['p20_ms']}–{r['p80_ms']}) | {r['vs_single']}× "
            f"| {r['in_collectives_ms']} | {r['collective_calls']} | {r['all_reduce_alone_us']} "
            f"| {r['all_reduce_bytes_per_row']:g} | {r['all_gather_sent_bytes_per_row']:g} / "
            f"{r['all_gather_received_bytes_per_row']:g} |"
        )
    lines += ["", "| batch | P (threads each) | run | s per epoch (epochs 2..) | speed-up vs 1 "
              "| first epoch s | whole call s | steps per epoch | all-reduce alone: gradient, "
              "loss ms | final training loss, bits | rel. diff vs 1: epoch 1, final |",
              "|" + "---|" * 11]  # fmt: skip
    for r in train:
        lines.append(
            f"| {r['batch']} | {r['processes']} ({r['threads_per_process']}) | {r['method']} "
            f"| {r['median_ms'] / 1e3:.3f} | {r['speedup_vs_1']}× "
            f"| {r['first_epoch_ms'] / 1e3:.2f} | {r['wall_ms'] / 1e3:.2f} "
            f"| {r['steps_per_epoch']} | {r['grad_all_reduce_alone_ms']}, "
            f"{r['loss_all_reduce_alone_ms']} "
            f"| {r['final_train_bits']:.8f} "
            f"| {r['epoch1_rel_diff_vs_1']:.1e}, {r['final_rel_diff_vs_1']:.1e} |"
        )
    lines += ["", "Computed, not measured: bytes per row each rank needs from the others",
              "| C | logits | P | crossent (smoothed) | all-gather (P − 1)/P · C · itemsize |",
              "|" + "---|" * 5]  # fmt: skip
    for r in computed_volume():
        lines.append(f"| {r['classes']:,} | {r['dtype']} | {r['processes']} | {r['crossent']} "
                     f"({r['crossent_smoothed']}) | {r['all_gather']:,} |")  # fmt: skip
    return "\n".join(lines)


def plot(loss: list[dict], train: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 5))
    styles = {"crossent": ("o-", "C0"), "all-gather": ("s--", "C3")}
    for classes in sorted({r["classes"] for r in loss}):
        mark = "" if classes == min(r["classes"] for r in loss) else " "
        for method, (style, colour) in styles.items():
            points = [(r["processes"], r["median_ms"]) for r in loss
                      if r["classes"] == classes and r["method"] == method]  # fmt: skip
            if points:
                p, t = zip(*points, strict=True)
                left.plot(p, t, style, color=colour, alpha=1.0 if not mark else 0.55,
                          label=f"{method}, C = {classes:,}")  # fmt: skip
        single = [r["median_ms"] for r in loss
                  if r["classes"] == classes and r["method"] == "single"]  # fmt: skip
        if single:
            left.axhline(single[0], color="grey", ls=":", lw=1)
            corner = (max(r["processes"] for r in loss), single[0])
            left.annotate(f"single process, C = {classes:,}", corner, ha="right", va="bottom",
                          fontsize=8, color="grey")  # fmt: skip
    left.set(xlabel="processes P", ylabel="median ms per forward + backward", yscale="log",
             title=f"Vocabulary-parallel loss, N = {loss[0]['rows']:,}, float32")  # fmt: skip
    left.set_xticks(sorted({r["processes"] for r in loss}))
    left.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.16), ncol=2)
    for number, batch in enumerate(sorted({r["batch"] for r in train})):
        points = [(r["processes"], r["median_ms"] / 1e3) for r in train
                  if r["batch"] == batch and r["method"] == "train_data_parallel"]  # fmt: skip
        p, t = zip(*points, strict=True)
        right.plot(p, t, "o-", color=("C2", "C4", "C1")[number % 3], label=f"batch {batch}")
    right.set(xlabel="processes P", ylabel="seconds per epoch (median, epochs 2..)",
              title=f"Data-parallel SGD, MLP {train[0]['hidden'].replace('x', ', ')}, "
              f"{train[0]['rows']:,} rows", ylim=(0, None))  # fmt: skip
    right.set_xticks(sorted({r["processes"] for r in train}))
    right.legend(fontsize=8, loc="upper left", bbox_to_anchor=(0, -0.16), ncol=2)
    cores = os.cpu_count() or 1
    right.axvline(cores, color="grey", ls=":", lw=1)
    right.annotate(f"{cores} cores", (cores, 0), ha="right", va="bottom", fontsize=8,
                   color="grey", rotation=90)  # fmt: skip
    figure.suptitle(f"{about('cpu')['device_name']}, {cores} cores; one run", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    log(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--classes", type=lambda s: [int(c) for c in s.split(",")], default=None)
    parser.add_argument("--processes", type=lambda s: [int(c) for c in s.split(",")],
                        default=None)  # fmt: skip
    parser.add_argument("--repeat", type=int, default=5, help="timed calls per method (5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls first (2)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--skip", choices=("loss", "train"), default=None)
    add_csv_option(parser, DOCS / "distributed.csv")
    parser.add_argument("--plot", type=Path, default=None,
                        help=f"the PNG (default {DOCS / 'distributed_scaling.png'}; none with "
                        "--quick)")  # fmt: skip
    args = parser.parse_args(argv)
    args.rows = args.rows or (256 if args.quick else ROWS)
    args.classes = args.classes or ([4000] if args.quick else list(FULL_CLASSES))
    args.processes = args.processes or ([1, 2] if args.quick else list(PROCESSES))
    if args.quick:
        args.repeat, args.warmup = min(args.repeat, 3), min(args.warmup, 1)

    from crossent.torch.distributed import launch

    launch(_noop, 1, timeout=120)  # starts the fork server (imports torch once), untimed
    begin = time.perf_counter()
    loss = bench_loss(args) if args.skip != "loss" else []
    train = bench_train(args) if args.skip != "train" else []
    log(f"done in {time.perf_counter() - begin:.0f} s")
    csv_path = results_path(args, DOCS / "distributed.csv")
    if csv_path is not None:
        keys = list(dict.fromkeys(k for row in loss + train for k in row))  # one header for both
        table = [{k: row.get(k, "") for k in keys} for row in loss + train]
        write_csv(csv_path, table, {**about("cpu"), "cores": str(os.cpu_count())})
    plot_path = args.plot or (None if args.quick else DOCS / "distributed_scaling.png")
    if plot_path is not None and loss and train:
        plot(loss, train, plot_path)
    print(markdown(loss, train))
    log(f"peak RSS of this process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10} MB")


def _noop(rank: int, world: int) -> None:
    return None


if __name__ == "__main__":
    sys.exit(main())
