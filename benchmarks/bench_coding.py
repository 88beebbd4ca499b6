"""Benchmark label coding: labels/s to encode and decode, and the overhead in bits.

What is measured
    crossent.coding.compress and decompress of N labels over M classes, each label under its
    own predicted distribution, for M = 10, 1,000 and 50,000. The predictions are weights
    u = exp(z − max z) of normal logits z with standard deviation 3 (a confident model), and
    each label is drawn from its own row, so the NLL is what a calibrated model pays.
    A call includes everything a user waits for: quantising every row to 24-bit frequencies,
    the range coder, the fingerprint and label hashes, and writing (or reading) the file.

    The anchor is constriction alone (the coder crossent drives): RangeEncoder.encode and
    RangeDecoder.decode with Categorical(perfect=False) on the float probabilities, quantised
    by constriction's own fast quantiser, no file. The ratio anchor time / crossent time
    shows what crossent's exact quantisation and checks cost.

Overhead
    overhead = compressed payload bits − NLL of the quantised model (the model really
    used), in bits and bits per label; also the payload against the float model's NLL.

Usage:
    python benchmarks/bench_coding.py            # full run, writes docs/benchmarks/coding.csv
    python benchmarks/bench_coding.py --quick    # small N, a smoke test in seconds
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import constriction
import numpy as np

import crossent
from bench_measures import (
    add_csv_option,
    cpu_model,
    git_commit,
    l3_cache,
    log,
    results_path,
    write_csv,
)
from crossent.coding.labels import compress, decompress

CASES = ((10, 1_000_000), (1_000, 50_000), (50_000, 1_000))
QUICK_CASES = ((10, 20_000), (1_000, 1_000), (50_000, 40))
CHUNK_ELEMENTS = 1 << 20
DEFAULT_CSV = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "coding.csv"


def problem(classes: int, rows: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    u = np.empty((rows, classes))
    labels = np.empty(rows, dtype=np.int64)
    step = max(1, CHUNK_ELEMENTS // classes)
    for start in range(0, rows, step):
        z = 3.0 * rng.standard_normal((min(step, rows - start), classes))
        chunk = np.exp(z - z.max(axis=1, keepdims=True))
        u[start : start + len(chunk)] = chunk
        shares = np.cumsum(chunk, axis=1) / chunk.sum(axis=1, keepdims=True)
        drawn = (shares < rng.random((len(chunk), 1))).sum(axis=1)
        labels[start : start + len(chunk)] = np.minimum(drawn, classes - 1)
    return u, labels


def timed(call: Callable[[], object], repeat: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def constriction_alone(u: np.ndarray, labels: np.ndarray) -> tuple[Callable, Callable]:
    probs = u / u.sum(axis=1, keepdims=True)
    step = max(1, CHUNK_ELEMENTS // u.shape[1])
    model = constriction.stream.model.Categorical(perfect=False)
    symbols = labels.astype(np.int32)

    def encode() -> np.ndarray:
        encoder = constriction.stream.queue.RangeEncoder()
        for start in range(0, len(labels), step):
            encoder.encode(symbols[start : start + step], model, probs[start : start + step])
        return encoder.get_compressed()

    words = encode()

    def decode() -> None:
        decoder = constriction.stream.queue.RangeDecoder(words)
        for start in range(0, len(labels), step):
            decoder.decode(model, probs[start : start + step])

    return encode, decode


def one_case(classes: int, rows: int, repeat: int, folder: Path) -> list[dict]:
    log(f"M = {classes:,}, N = {rows:,}: generating")
    u, labels = problem(classes, rows)
    weights = lambda a, b: u[a:b]  # noqa: E731
    path = folder / f"labels-{classes}.xent"
    chunk_rows = max(1, CHUNK_ELEMENTS // classes)
    identity = {"model_sha256": "0" * 64}
    summary = compress(path, labels, weights, identity=identity, chunk_rows=chunk_rows)
    assert (decompress(path, weights, identity=identity) == labels).all()
    encode, decode = constriction_alone(u, labels)
    calls = {
        ("crossent", "encode"): lambda: compress(
            path, labels, weights, identity=identity, chunk_rows=chunk_rows
        ),
        ("crossent", "decode"): lambda: decompress(path, weights, identity=identity),
        ("constriction alone", "encode"): encode,
        ("constriction alone", "decode"): decode,
    }
    results = {}
    for key, call in calls.items():
        log(f"  {key[0]} {key[1]}")
        results[key] = timed(call, repeat)
    rows_out = []
    for (who, direction), (median, times) in results.items():
        anchor = results["constriction alone", direction][0]
        rows_out.append(
            {
                "classes": classes,
                "labels": rows,
                "implementation": who,
                "direction": direction,
                "median_s": round(median, 4),
                "min_s": round(min(times), 4),
                "labels_per_s": round(rows / median),
                "ratio_anchor_over_this": round(anchor / median, 3),
                "nll_bits": round(summary.nll_bits, 1),
                "quantised_nll_bits": round(summary.quantised_nll_bits, 1),
                "compressed_bits": summary.compressed_bits,
                "overhead_bits": round(summary.overhead_bits, 1),
                "overhead_bits_per_label": f"{summary.overhead_bits / rows:.2e}",
                "file_bytes": summary.file_bytes,
            }
        )
    return rows_out


def markdown(rows: list[dict]) -> str:
    lines = [
        "| M | N | encode labels/s (ratio) | decode labels/s (ratio) "
        "| constriction alone, enc / dec | NLL bits (quantised) | payload bits "
        "| overhead bits (per label) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    index = {(r["classes"], r["implementation"], r["direction"]): r for r in rows}
    for classes, count in dict.fromkeys((r["classes"], r["labels"]) for r in rows):
        enc, dec = (index[classes, "crossent", d] for d in ("encode", "decode"))
        alone = [
            index[classes, "constriction alone", d]["labels_per_s"] for d in ("encode", "decode")
        ]
        cells = [
            f"{classes:,}",
            f"{count:,}",
            f"{enc['labels_per_s']:,} ({enc['ratio_anchor_over_this']}×)",
            f"{dec['labels_per_s']:,} ({dec['ratio_anchor_over_this']}×)",
            f"{alone[0]:,} / {alone[1]:,}",
            f"{enc['nll_bits']:,} ({enc['quantised_nll_bits']:,})",
            f"{enc['compressed_bits']:,}",
            f"{enc['overhead_bits']} ({enc['overhead_bits_per_label']})",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"small sizes {QUICK_CASES}")
    parser.add_argument("--repeat", type=int, default=3, help="timed calls of each (median)")
    add_csv_option(parser, DEFAULT_CSV)
    args = parser.parse_args(argv)
    csv_path = results_path(args, DEFAULT_CSV)
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as folder:
        for classes, count in QUICK_CASES if args.quick else CASES:
            rows += one_case(classes, count, args.repeat, Path(folder))
    about = {
        "cpu": cpu_model(),
        "l3_cache": l3_cache(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "constriction": "0.5.0"
        if not hasattr(constriction, "__version__")
        else constriction.__version__,
        "crossent": crossent.__version__,
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if csv_path is not None:
        write_csv(csv_path, rows, about)
    print(markdown(rows))


if __name__ == "__main__":
    main()
