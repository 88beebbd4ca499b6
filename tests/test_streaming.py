"""`predict` and `score` stream CSV and Parquet in constant memory, whatever the file's size.

pyarrow's streaming CSV reader reads up to 33 blocks ahead of the batch it hands out, so the
block size bounds its memory: with 16 MiB blocks it held the first 528 MiB of a file. The fast
test checks that bound; the slow one measures the peak memory of the real command on a file
of a few hundred MB against a small one (benchmarks/bench_score.py --memory plots the same).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest

from crossent.classifier.data import BLOCK_BYTES, stream

CLASSES = [str(j) for j in range(20)]
MiB = 1 << 20


def predictions(path: Path, rows: int) -> Path:
    """A predictions file (label, then 20 class columns) of ``rows`` rows, written in chunks."""
    schema = pa.schema([("label", pa.string()), *((c, pa.float64()) for c in CLASSES)])
    rng = np.random.default_rng(0)
    csv = path.suffix == ".csv"
    writer = pa_csv.CSVWriter(path, schema) if csv else pq.ParquetWriter(path, schema)
    with writer:
        for start in range(0, rows, 200_000):
            count = min(200_000, rows - start)
            probs = rng.dirichlet(np.ones(20), size=count)
            labels = pa.array(np.asarray(CLASSES)[probs.argmax(axis=1)])
            columns = [labels, *(pa.array(column) for column in probs.T)]
            writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=schema))
    return path


def test_the_csv_reader_reads_a_bounded_distance_ahead(tmp_path: Path) -> None:
    """When the first batch comes out, about 33 blocks of 1 MiB have been read, not more."""
    path = predictions(tmp_path / "p.csv", 150_000)  # about 60 MB
    assert path.stat().st_size > 50 * MiB
    read: list[int] = []
    types = {"label": pa.string(), **dict.fromkeys(CLASSES, pa.float64())}
    batches = stream(path, types, on_bytes=lambda done, total: read.append(done))
    next(batches)
    batches.close()
    assert read[0] <= 40 * BLOCK_BYTES  # with 16 MiB blocks: the whole file


LAUNCHER = """
import json, os, sys
pid = os.posix_spawn(sys.argv[1], sys.argv[1:], os.environ,
                     file_actions=[(os.POSIX_SPAWN_OPEN, 1, os.devnull, os.O_WRONLY, 0)])
_, status, usage = os.wait4(pid, 0)
print(json.dumps({"exit": os.waitstatus_to_exitcode(status), "kib": usage.ru_maxrss}))
"""


def peak_mib(path: Path) -> float:
    """The peak resident memory of `crossent score PATH`, from a small launcher process (a
    child of this large test process would report this process's memory)."""
    command = [str(Path(sys.executable).with_name("crossent")), "score", str(path)]
    done = subprocess.run(
        [sys.executable, "-c", LAUNCHER, *command, "--target", "label"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "COLUMNS": "100"},
    )
    result = json.loads(done.stdout)
    assert result["exit"] == 0, done.stderr
    return float(result["kib"]) / 1024


@pytest.mark.slow
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_score_peak_memory_does_not_grow_with_the_file(tmp_path: Path, suffix: str) -> None:
    """700,000 rows (about 290 MB as CSV) against 20,000: within 64 MiB of each other."""
    small = peak_mib(predictions(tmp_path / f"small{suffix}", 20_000))
    large_file = predictions(tmp_path / f"large{suffix}", 700_000)
    if suffix == ".csv":
        assert large_file.stat().st_size > 250e6
    large = peak_mib(large_file)
    assert large - small < 64, (small, large)
