"""Tables in, checked arrays out: CSV / Parquet files and scikit-learn's bundled data sets.

Labels are identified by their text, so a model trained on the integer labels 0..9 of a CSV
file recognises the columns "0".."9" of a predictions file: ``classes`` are always strings,
ordered numerically when the labels were integers and alphabetically otherwise.

Rows in messages are counted from 0 over the data rows, header not counted.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from crossent._files import atomic_path

BUNDLED = ("iris", "wine", "digits", "breast_cancer")
_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


@dataclass(frozen=True)
class LabelledData:
    """Features ``(N, D)`` float64 and labels ``(N,)`` as indices into ``classes``."""

    features: np.ndarray
    labels: np.ndarray
    classes: list[str]
    feature_names: list[str]
    target: str
    source: str


def bundled(name: str) -> LabelledData:
    """One of scikit-learn's bundled data sets (nothing is downloaded)."""
    from sklearn import datasets

    if name not in BUNDLED:
        raise ValueError(f"`--dataset` must be one of {', '.join(BUNDLED)}; got {name!r}")
    loaded: Any = getattr(datasets, f"load_{name}")()
    names = np.asarray(loaded.target_names).astype(str)
    labels = names[loaded.target] if name != "digits" else loaded.target
    table = pa.table(dict(zip(map(str, loaded.feature_names), loaded.data.T, strict=True)))
    table = table.append_column("target", pa.array(labels))
    return labelled(table, "target", source=f"scikit-learn {name}")


def split(data: LabelledData, test_size: float, seed: int) -> tuple[LabelledData, LabelledData]:
    """A stratified split into training and held-out parts (each class in both)."""
    from sklearn.model_selection import train_test_split

    if not 0 < test_size < 1:
        raise ValueError(f"`--test-size` must be a fraction in (0, 1); got {test_size!r}")
    counts = np.bincount(data.labels, minlength=len(data.classes))
    if counts.min() < 2:
        rare = [label for label, n in zip(data.classes, counts, strict=True) if n < 2]
        raise ValueError(
            f"each class needs at least 2 examples to appear in both splits; "
            f"{_listing(rare)} of {data.source} have 1"
        )
    rows = np.arange(len(data.labels))
    try:
        train_rows, test_rows = train_test_split(
            rows, test_size=test_size, random_state=seed, stratify=data.labels
        )
    except ValueError as error:  # too few rows for the held-out part to hold every class
        raise ValueError(
            f"cannot split {data.source} with --test-size {test_size}: {error}"
        ) from None
    return _rows(data, np.sort(train_rows)), _rows(data, np.sort(test_rows))


def _rows(data: LabelledData, rows: np.ndarray) -> LabelledData:
    return replace(data, features=data.features[rows], labels=data.labels[rows])


def read_table(path: str | os.PathLike[str]) -> pa.Table:
    """The whole of a CSV or Parquet file, its column types inferred."""
    path, kind = _existing(path)
    if kind == "csv":
        return pa_csv.read_csv(path)
    return pq.read_table(path)


def column_names(path: str | os.PathLike[str]) -> list[str]:
    """The column names of a CSV or Parquet file, read from its header."""
    path, kind = _existing(path)
    if kind == "parquet":
        return list(pq.read_schema(path).names)
    with path.open("rb") as file:
        header = pa_csv.open_csv(file, read_options=pa_csv.ReadOptions(block_size=1 << 24))
        return list(header.schema.names)


def labelled(table: pa.Table, target: str, source: str) -> LabelledData:
    """Split a table into numeric, finite features and encoded labels of column ``target``."""
    check_columns(table.column_names, [target], "target column", source)
    classes, labels = _encode_new_labels(table.column(target), target)
    feature_names = [name for name in table.column_names if name != target]
    if not feature_names:
        raise ValueError(f"{source} has no feature columns besides the target {target!r}")
    features = feature_matrix(table, feature_names, source)
    return LabelledData(features, labels, classes, feature_names, target, source)


def feature_matrix(
    table: pa.Table, names: Sequence[str], source: str, *, first_row: int = 0
) -> np.ndarray:
    """Columns ``names`` as a float64 ``(N, D)`` array: numeric, no missing values, finite.

    ``first_row`` is the position of the table's first row in the file, for messages.
    """
    check_columns(table.column_names, names, "feature column", source)
    columns = [table.column(name) for name in names]
    text = [name for name, column in zip(names, columns, strict=True) if not _numeric(column)]
    if text:
        kinds = ", ".join(f"{name!r} ({table.schema.field(name).type})" for name in text)
        raise ValueError(f"features must be numeric; {source} has non-numeric columns {kinds}")
    for name, column in zip(names, columns, strict=True):
        check_no_missing(column, f"feature {name!r}", source, first_row)
    matrix = np.column_stack([_floats(column) for column in columns])
    _check_finite(matrix, names, source, first_row)
    return matrix


def encode_labels(
    values: pa.ChunkedArray | pa.Array, classes: Sequence[str], what: str, *, first_row: int = 0
) -> np.ndarray:
    """Labels as int64 indices into ``classes``; a label outside them is an error."""
    text = _as_text(values)
    index = pc.index_in(text, value_set=pa.array(list(classes), pa.string()))
    if index.null_count:
        row = _first_true(index.is_null())
        label = text[row].as_py()
        raise ValueError(
            f"{what} has the label {label!r} at row {first_row + row}, which is not one of "
            f"the {len(classes)} classes {_listing(classes)}"
        )
    return np.asarray(index.to_numpy(zero_copy_only=False), dtype=np.int64)


def check_no_missing(
    column: pa.ChunkedArray | pa.Array, what: str, source: str, first_row: int = 0
) -> None:
    """A column must have no missing value; the message names the first one's row."""
    if column.null_count:
        row = first_row + _first_true(column.is_null())
        raise ValueError(f"{what} has a missing value at row {row} of {source}")


def check_columns(have: Sequence[str], want: Sequence[str], what: str, source: str) -> None:
    """Every name of ``want`` must be a column; the message lists the columns that exist."""
    missing = [name for name in want if name not in have]
    if missing:
        raise ValueError(
            f"{what} {_listing(missing)} not found in {source}; its columns are {_listing(have)}"
        )


def file_kind(path: Path) -> str:
    """'csv' or 'parquet', from the file name's suffix."""
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"{str(path)!r} must end in .csv or .parquet; got suffix {path.suffix or 'none'!r}"
        )
    return kind


def stream(
    path: str | os.PathLike[str],
    column_types: dict[str, pa.DataType],
    *,
    on_bytes: Callable[[int, int], None] | None = None,
    block_bytes: int = 1 << 24,
) -> Iterator[pa.RecordBatch]:
    """Record batches of a CSV or Parquet file, in constant memory.

    ``on_bytes(done, total)`` reports progress through the file.
    """
    path, kind = _existing(path)
    total = path.stat().st_size
    blocks = _csv_blocks if kind == "csv" else _parquet_blocks
    for batch, done in blocks(path, column_types, block_bytes):
        if on_bytes is not None:
            on_bytes(min(done, total), total)
        yield batch
    if on_bytes is not None:
        on_bytes(total, total)


def write_batches(path: str | os.PathLike[str], batches: Iterator[pa.RecordBatch]) -> int:
    """Write record batches to CSV or Parquet through a temporary file; return the row count."""
    path = Path(path)
    kind = file_kind(path)
    rows = 0
    with atomic_path(path) as temporary:
        writer: Any = None
        try:
            for batch in batches:
                if writer is None:
                    writer = _writer(kind, temporary, batch.schema)
                writer.write_batch(batch) if kind == "parquet" else writer.write(batch)
                rows += batch.num_rows
        finally:
            if writer is not None:
                writer.close()
        if writer is None:
            raise ValueError(f"nothing to write to {str(path)!r}: the input has no rows")
    return rows


def write_table(path: str | os.PathLike[str], table: pa.Table) -> None:
    """Write a whole table to CSV or Parquet through a temporary file."""
    write_batches(path, iter(table.to_batches()))


def _writer(kind: str, path: Path, schema: pa.Schema) -> Any:
    if kind == "csv":
        return pa_csv.CSVWriter(path, schema)
    return pq.ParquetWriter(path, schema)


def _csv_blocks(
    path: Path, column_types: dict[str, pa.DataType], block_bytes: int
) -> Iterator[tuple[pa.RecordBatch, int]]:
    """Record batches of a CSV file, each with the bytes of the file read so far."""
    convert = pa_csv.ConvertOptions(column_types=column_types)
    read = pa_csv.ReadOptions(block_size=block_bytes)
    with path.open("rb") as file:
        for batch in pa_csv.open_csv(file, read_options=read, convert_options=convert):
            yield batch, file.tell()


def _parquet_blocks(
    path: Path, column_types: dict[str, pa.DataType], block_bytes: int
) -> Iterator[tuple[pa.RecordBatch, int]]:
    """Record batches of a Parquet file, each with the share of the file read so far."""
    # pre_buffer=False: with it, pyarrow keeps reading ahead and memory grows with the file
    file = pq.ParquetFile(path, pre_buffer=False)
    rows_per_batch = max(1, block_bytes // max(1, 8 * len(file.schema_arrow)))
    total, done = path.stat().st_size, 0
    for batch in file.iter_batches(batch_size=rows_per_batch):
        done += batch.num_rows
        yield _cast(batch, column_types), total * done // max(1, file.metadata.num_rows)


def _cast(batch: pa.RecordBatch, column_types: dict[str, pa.DataType]) -> pa.RecordBatch:
    arrays = [
        batch.column(i).cast(column_types[name]) if name in column_types else batch.column(i)
        for i, name in enumerate(batch.schema.names)
    ]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _encode_new_labels(column: pa.ChunkedArray, target: str) -> tuple[list[str], np.ndarray]:
    """The classes of a training target (sorted as numbers if integers) and the indices."""
    if column.null_count:
        row = _first_true(column.is_null())
        raise ValueError(f"target column {target!r} has a missing label at row {row}")
    if pa.types.is_floating(column.type):
        raise ValueError(
            f"target column {target!r} must hold integer or string labels; got {column.type}"
        )
    unique = pc.unique(column).sort()
    classes = [str(value) for value in unique.to_pylist()]
    if len(classes) < 2:
        shown = classes[0] if classes else "nothing"
        raise ValueError(
            f"target column {target!r} must hold at least 2 classes to classify; "
            f"it holds only {shown!r}"
        )
    return classes, encode_labels(column, classes, f"target column {target!r}")


def _as_text(values: pa.ChunkedArray | pa.Array) -> pa.ChunkedArray | pa.Array:
    if pa.types.is_dictionary(values.type):
        values = values.cast(values.type.value_type)
    return values if pa.types.is_string(values.type) else values.cast(pa.string())


def _numeric(column: pa.ChunkedArray) -> bool:
    kind = column.type
    return bool(
        pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)
    )


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(column.to_numpy(), dtype=np.float64)


def _check_finite(matrix: np.ndarray, names: Sequence[str], source: str, first_row: int) -> None:
    bad = ~np.isfinite(matrix)
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"features must be finite; {source} has {float(matrix[row, col])!r} "
            f"at row {first_row + row}, column {names[col]!r}"
        )


def _first_true(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(np.flatnonzero(np.asarray(mask.to_numpy(zero_copy_only=False)))[0])


def _existing(path: str | os.PathLike[str]) -> tuple[Path, str]:
    """A file to read, and its kind; a wrong suffix or a missing file is an error."""
    path = Path(path)
    kind = file_kind(path)
    if not path.is_file():
        raise ValueError(f"no such file: {str(path)!r}")
    return path, kind


def _listing(names: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(repr(name) for name in names[:limit])
    more = f", … ({len(names) - limit} more)" if len(names) > limit else ""
    return f"[{shown}{more}]"
