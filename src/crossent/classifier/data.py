"""Tables in, checked arrays out: CSV / Parquet files and scikit-learn's bundled data sets.

Labels are identified by their text, so a model trained on the integer labels 0..9 of a CSV
file recognises the columns "0".."9" of a predictions file: ``classes`` are always strings,
ordered numerically when the labels were integers and alphabetically otherwise.

Every message names the file, the column, the row and the value. Rows are numbered as a
spreadsheet shows the file: the header is row 1, the first row of data row 2.

Large files are read in blocks of about 1 MiB (:func:`stream`), so memory does not grow with
the file: pyarrow's CSV reader reads up to 33 blocks ahead of the one it hands out, so the
block size bounds the memory it holds.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from crossent._files import atomic_path
from crossent.classifier._locate import expected, explain_csv, first_failing, row_number
from crossent.classifier.options import BUNDLED

_SUFFIXES = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}
BLOCK_BYTES = 1 << 20  # read at a time; pyarrow's CSV reader holds up to 33 blocks
_LONGEST_FIRST_ROW = 1 << 28  # bytes of the first rows read to size the blocks
_ROWS_PER_BLOCK = 8  # at least, judging by the first rows' length
_PARQUET_BUFFER = 1 << 16  # bytes read at a time from each column of a Parquet file


@dataclass(frozen=True)
class LabelledData:
    """Features ``(N, D)`` float64 and labels ``(N,)`` as indices into ``classes``.

    Attributes:
        features: ``(N, D)`` float64, finite.
        labels: ``(N,)`` int64 indices into ``classes``.
        classes: the M labels as text, sorted (integer labels as numbers).
        feature_names: the D feature columns, in order.
        target: the name of the label column.
        source: what the data came from, as messages name it.

    >>> iris = bundled("iris")
    >>> iris.features.shape, iris.labels[:3].tolist(), iris.classes
    ((150, 4), [0, 0, 0], ['setosa', 'versicolor', 'virginica'])
    """

    features: np.ndarray
    labels: np.ndarray
    classes: list[str]
    feature_names: list[str]
    target: str
    source: str


def bundled(name: str) -> LabelledData:
    """One of scikit-learn's bundled data sets (nothing is downloaded).

    Args:
        name: "iris", "wine", "digits" or "breast_cancer".

    >>> digits = bundled("digits")
    >>> digits.features.shape, len(digits.classes), digits.source
    ((1797, 64), 10, 'scikit-learn digits')
    """
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
    """A stratified split into training and held-out parts (each class in both).

    Args:
        data: the rows to split.
        test_size: the fraction held out, in (0, 1).
        seed: the seed of the shuffle.

    Returns:
        ``(training, held_out)``, each a :class:`LabelledData` with rows in file order.

    >>> training, held_out = split(bundled("iris"), test_size=0.2, seed=0)
    >>> len(training.labels), len(held_out.labels), sorted(set(held_out.labels.tolist()))
    (120, 30, [0, 1, 2])
    """
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


def read_table(path: str | os.PathLike[str], *, text_columns: Sequence[str] = ()) -> pa.Table:
    """The whole of a CSV or Parquet file, its column types inferred.

    ``text_columns`` of a CSV file are read as text, not inferred: labels such as
    18446744073709551615 (2**64 − 1, which pyarrow would read as a float) or "007" stay exact.

    Args:
        path: a ``.csv`` or ``.parquet`` file.
        text_columns: columns of a CSV file to read as text.

    A bad file is a ValueError that names it, and the row and column where that helps.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = Path(folder.name) / "t.csv"
    >>> _ = path.write_text("x,label\\n0.5,007\\n1.5,18446744073709551615\\n")
    >>> read_table(path, text_columns=["label"]).column("label").to_pylist()
    ['007', '18446744073709551615']
    >>> folder.cleanup()
    """
    path, kind = _existing(path)
    with _reading(path):
        if kind == "csv":
            table = _read_csv(path, {name: pa.string() for name in text_columns})
        else:
            table = pq.read_table(path)
    check_unique(table.column_names, repr(str(path)))
    return table


def column_names(path: str | os.PathLike[str]) -> list[str]:
    """The column names of a CSV or Parquet file, read from its header."""
    path, kind = _existing(path)
    with _reading(path):
        if kind == "parquet":
            names = list(pq.read_schema(path).names)
        else:
            with _csv_reader(path, {}, _csv_block_size(path, BLOCK_BYTES)) as (reader, _):
                names = list(reader.schema.names)
    check_unique(names, repr(str(path)))
    return names


def labelled(table: pa.Table, target: str, source: str) -> LabelledData:
    """Split a table into numeric, finite features and encoded labels of column ``target``.

    Args:
        table: a pyarrow table, e.g. :func:`read_table`'s.
        target: the label column; every other column is a feature.
        source: what the table came from, for messages (e.g. the file's name).

    >>> table = pa.table({"x": [0.1, 0.2, 0.3], "y": ["b", "a", "b"]})
    >>> data = labelled(table, "y", source="'t.csv'")
    >>> data.classes, data.labels.tolist(), data.feature_names
    (['a', 'b'], [1, 0, 1], ['x'])
    >>> labelled(table, "z", source="'t.csv'")
    Traceback (most recent call last):
    ValueError: target column ['z'] not found in 't.csv'; its columns are ['x', 'y']
    """
    check_columns(table.column_names, [target], "target column", source)
    classes, labels = _encode_new_labels(table.column(target), target, source)
    feature_names = [name for name in table.column_names if name != target]
    if not feature_names:
        raise ValueError(f"{source} has no feature columns besides the target {target!r}")
    features = feature_matrix(table, feature_names, source)
    return LabelledData(features, labels, classes, feature_names, target, source)


def feature_matrix(
    table: pa.Table, names: Sequence[str], source: str, *, first_row: int = 0
) -> np.ndarray:
    """Columns ``names`` as a float64 ``(N, D)`` array: numeric, no missing values, finite.

    ``first_row`` is the position of the table's first row among the file's data rows.
    """
    check_columns(table.column_names, names, "feature column", source)
    columns = [table.column(name) for name in names]
    for name, column in zip(names, columns, strict=True):
        _check_numeric(column, name, source, first_row)
        check_no_missing(column, f"feature {name!r}", source, first_row)
    matrix = np.column_stack([_floats(column) for column in columns])
    _check_finite(matrix, names, source, first_row)
    return matrix


def encode_labels(
    values: pa.ChunkedArray | pa.Array, classes: Sequence[str], what: str, *, first_row: int = 0
) -> np.ndarray:
    """Labels as int64 indices into ``classes``; a label outside them is an error.

    ``what`` names the column in messages ("'x.csv', column 'y',").
    """
    text = label_text(values, what)
    _check_labelled(text, what, first_row)
    index = pc.index_in(text, value_set=pa.array(list(classes), pa.string()))
    if index.null_count:
        row = _first_true(index.is_null())
        label = text[row].as_py()
        raise ValueError(
            f"{what} has the label {label!r} at row {row_number(first_row + row)}, which is not "
            f"one of the {len(classes)} classes {_listing(classes)}"
        )
    return np.asarray(index.to_numpy(zero_copy_only=False), dtype=np.int64)


def label_text(values: pa.ChunkedArray | pa.Array, what: str) -> pa.ChunkedArray | pa.Array:
    """Labels as text, exactly as pyarrow writes them (2**64 − 1 as 18446744073709551615);
    a column of lists, structs or other compound values is an error."""
    kind = values.type
    if pa.types.is_dictionary(kind):
        values, kind = values.cast(kind.value_type), kind.value_type
    if pa.types.is_string(kind):
        return values
    if pa.types.is_large_string(kind) or _is_scalar(kind):
        return values.cast(pa.string())
    raise ValueError(f"{what} must hold integer or text labels; it holds {kind}")


def check_no_missing(
    column: pa.ChunkedArray | pa.Array, what: str, source: str, first_row: int = 0
) -> None:
    """A column must have no missing value; the message names the first one's row."""
    if column.null_count:
        row = row_number(first_row + _first_true(column.is_null()))
        raise ValueError(f"{what} has a missing value at row {row} of {source}")


def check_columns(have: Sequence[str], want: Sequence[str], what: str, source: str) -> None:
    """Every name of ``want`` must be a column; the message lists the columns that exist."""
    missing = [name for name in want if name not in have]
    if missing:
        raise ValueError(
            f"{what} {_listing(missing)} not found in {source}; its columns are {_listing(have)}"
        )


def check_unique(names: Sequence[str], source: str) -> None:
    """Column names must differ: a name must say which column it means."""
    seen: dict[str, int] = {}
    for position, name in enumerate(names, start=1):
        if name in seen:
            raise ValueError(
                f"{source} has two columns named {name!r} (columns {seen[name]} and "
                f"{position}); give every column its own name"
            )
        seen[name] = position


def file_kind(path: Path) -> str:
    """'csv' or 'parquet', from the file name's suffix."""
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise ValueError(
            f"{str(path)!r} must end in .csv or .parquet; got suffix {path.suffix or 'none'!r}"
        )
    return kind


def recognise_table(path: Path) -> str | None:
    """None if the file at ``path`` is of its suffix's kind (a table that ``--force`` may
    replace with another); else why it is not."""
    with path.open("rb") as file:
        head = file.read(4096)
    if file_kind(path) == "parquet":
        return None if head.startswith(b"PAR1") else "is not a Parquet file"
    return "is not a CSV file: it holds binary data" if b"\0" in head else None


def stream(
    path: str | os.PathLike[str],
    column_types: dict[str, pa.DataType],
    *,
    on_bytes: Callable[[int, int], None] | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> Generator[pa.RecordBatch, None, None]:
    """Record batches of a CSV or Parquet file, in constant memory.

    ``on_bytes(done, total)`` reports progress through the file. The file is closed when the
    iterator is: use ``contextlib.closing`` so that it is, even when a batch is refused.
    """
    path, kind = _existing(path)
    total = path.stat().st_size
    blocks = _csv_blocks if kind == "csv" else _parquet_blocks
    with contextlib.closing(blocks(path, column_types, block_bytes)) as batches:
        for batch, done in batches:
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


def _read_csv(path: Path, column_types: dict[str, pa.DataType]) -> pa.Table:
    convert = pa_csv.ConvertOptions(column_types=column_types)
    try:
        with pa.OSFile(str(path)) as file:
            return pa_csv.read_csv(file, convert_options=convert)
    except pa.ArrowInvalid as error:
        raise ValueError(explain_csv(path, error, column_types, BLOCK_BYTES)) from None


def _csv_blocks(
    path: Path, column_types: dict[str, pa.DataType], block_bytes: int
) -> Generator[tuple[pa.RecordBatch, int], None, None]:
    """Record batches of a CSV file, each with the bytes of the file read so far."""
    block = _csv_block_size(path, block_bytes)
    with _csv_reader(path, column_types, block) as (reader, file):
        check_unique(reader.schema.names, repr(str(path)))
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as error:
                raise ValueError(explain_csv(path, error, column_types, block)) from None
            yield batch, file.tell()


@contextlib.contextmanager
def _csv_reader(
    path: Path, column_types: dict[str, pa.DataType], block: int
) -> Iterator[tuple[pa_csv.CSVStreamingReader, pa.NativeFile]]:
    """pyarrow's streaming CSV reader and its native file, both closed deterministically.

    A native file, not a Python one, because the reader reads ahead on a thread of its own:
    on a Python file that thread needs the interpreter, and a reader left open when a
    command ends on an error aborted it ("terminate called without an active exception").
    """
    with pa.OSFile(str(path)) as file:
        try:
            reader = pa_csv.open_csv(
                file,
                read_options=pa_csv.ReadOptions(block_size=block),
                convert_options=pa_csv.ConvertOptions(column_types=column_types),
            )
        except pa.ArrowInvalid as error:
            raise ValueError(explain_csv(path, error, column_types, block)) from None
        try:
            yield reader, file
        finally:
            reader.close()


def _csv_block_size(path: Path, block_bytes: int) -> int:
    """``block_bytes``, or more if the first rows are long: a block must hold whole rows."""
    with path.open("rb") as file:
        longest = max(len(file.readline(_LONGEST_FIRST_ROW)) for _ in range(2))
    return max(block_bytes, _ROWS_PER_BLOCK * longest)


def _parquet_blocks(
    path: Path, column_types: dict[str, pa.DataType], block_bytes: int
) -> Generator[tuple[pa.RecordBatch, int], None, None]:
    """Record batches of a Parquet file, each with the share of the file read so far."""
    source = repr(str(path))
    with _reading(path):
        # pre_buffer=False and a small read buffer per column: else pyarrow reads whole
        # column chunks (a row group's worth) and reads ahead, so memory grows with the row
        # groups; what it holds is then about a page (1 MiB by default) per column
        file = pq.ParquetFile(path, pre_buffer=False, buffer_size=_PARQUET_BUFFER)
    with contextlib.closing(file):
        schema = file.schema_arrow
        check_unique(schema.names, source)
        _check_types(schema, column_types, source)
        rows_per_batch = max(1, block_bytes // max(1, 8 * len(schema)))
        total, done = path.stat().st_size, 0
        with _reading(path):
            # one thread: each decoding thread held pages of its own (52 MiB more at 21
            # columns), and on two cores it was slower, not faster
            for batch in file.iter_batches(batch_size=rows_per_batch, use_threads=False):
                cast = _cast(batch, column_types, source, done)
                done += batch.num_rows
                yield cast, total * done // max(1, file.metadata.num_rows)


def _check_types(schema: pa.Schema, column_types: dict[str, pa.DataType], source: str) -> None:
    """Columns read as numbers or text must hold single values, not lists or structs."""
    for field in schema:
        wanted = column_types.get(field.name)
        if wanted is not None and not (
            _is_scalar(field.type) or pa.types.is_dictionary(field.type)
        ):
            raise ValueError(
                f"{source}, column {field.name!r}, holds {field.type}, where "
                f"{expected(wanted)} is expected"
            )


def _cast(
    batch: pa.RecordBatch, column_types: dict[str, pa.DataType], source: str, first_row: int
) -> pa.RecordBatch:
    arrays = [
        _cast_column(batch.column(i), column_types[name], name, source, first_row)
        if name in column_types
        else batch.column(i)
        for i, name in enumerate(batch.schema.names)
    ]
    return pa.RecordBatch.from_arrays(arrays, names=batch.schema.names)


def _cast_column(
    column: pa.Array, kind: pa.DataType, name: str, source: str, first_row: int
) -> pa.Array:
    try:
        return column.cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        index = first_failing(column, kind) or 0  # looked for only once a cast has failed
    raise ValueError(
        f"{source} has {column[index].as_py()!r} at row {row_number(first_row + index)}, "
        f"column {name!r}, where {expected(kind)} is expected"
    )


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """pyarrow's errors while reading ``path`` as one line that names it."""
    try:
        yield
    except (pa.ArrowException, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
        raise ValueError(f"cannot read {str(path)!r}: {reason}") from None


def _encode_new_labels(
    column: pa.ChunkedArray, target: str, source: str
) -> tuple[list[str], np.ndarray]:
    """The classes of a training target (sorted as numbers if integers) and the indices."""
    what = f"{source}, column {target!r},"
    if pa.types.is_floating(column.type):
        raise ValueError(f"{what} must hold integer or text labels; it holds {column.type}")
    text = label_text(column, what)
    _check_labelled(text, what, 0)
    classes = [str(value) for value in pc.unique(text).to_pylist()]
    if _all_match(classes, r"^[+-]?[0-9]+$"):
        classes.sort(key=lambda label: (int(label), label))
    else:
        _refuse_decimals(text, classes, what)
        classes.sort()
    if len(classes) < 2:
        shown = classes[0] if classes else "nothing"
        raise ValueError(
            f"target column {target!r} must hold at least 2 classes to classify; "
            f"it holds only {shown!r}"
        )
    return classes, encode_labels(text, classes, what)


def _check_labelled(text: pa.ChunkedArray | pa.Array, what: str, first_row: int) -> None:
    """Every row must have a label: no missing value, no empty text."""
    empty = pc.or_kleene(text.is_null(), pc.equal(pc.utf8_trim_whitespace(text), ""))
    if pc.any(empty).as_py():
        row = row_number(first_row + _first_true(pc.fill_null(empty, True)))
        raise ValueError(f"{what} has no label at row {row}")


def _refuse_decimals(text: pa.ChunkedArray | pa.Array, classes: list[str], what: str) -> None:
    """Text labels that are all decimal numbers ("0.5") are refused, as float labels are."""
    if first_failing(pa.array(classes), pa.float64()) is None:
        row = _first_true(pc.invert(pc.match_substring_regex(text, r"^[+-]?[0-9]+$")))
        raise ValueError(
            f"{what} must hold integer or text labels; it has the decimal number "
            f"{text[row].as_py()!r} at row {row_number(row)}"
        )


def _all_match(texts: list[str], pattern: str) -> bool:
    return bool(pc.all(pc.match_substring_regex(pa.array(texts, pa.string()), pattern)).as_py())


def _is_scalar(kind: pa.DataType) -> bool:
    """One number, text or truth value per row."""
    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_string(kind)
        or pa.types.is_large_string(kind)
        or pa.types.is_decimal(kind)
    )


def _check_numeric(column: pa.ChunkedArray, name: str, source: str, first_row: int) -> None:
    """A feature column must hold numbers; the message shows the first value that is not one."""
    if _numeric(column):
        return
    rule = "features must be numbers"
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise ValueError(f"{rule}; {source}, column {name!r}, holds {column.type}")
    index = first_failing(column, pa.float64())
    value = column[index if index is not None else 0].as_py()
    raise ValueError(
        f"{rule}; {source} has {value!r} at row {row_number(first_row + (index or 0))}, "
        f"column {name!r}"
    )


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
            f"at row {row_number(first_row + row)}, column {names[col]!r}"
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
