"""Where a table went wrong: the row, column and value behind pyarrow's terse messages.

pyarrow says "In CSV column #3: CSV conversion error to double: invalid value 'abc'" or
"Expected 3 columns, got 4", without the row, and a failed cast names neither row nor
column. These helpers find them, only once something has failed, reading the file again in
bounded blocks. Rows are numbered as a spreadsheet shows the file: the header is row 1, the
first row of data row 2 (:func:`row_number`).
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

_EXPECTED = {"double": "a number", "string": "text"}


def row_number(index: int) -> int:
    """The spreadsheet row of data row ``index`` (counted from 0): the header is row 1."""
    return index + 2


def expected(kind: pa.DataType) -> str:
    """What a value of type ``kind`` is, in words: "a number", "text"."""
    return _EXPECTED.get(str(kind), f"a value of type {kind}")


def first_failing(values: pa.Array | pa.ChunkedArray, kind: pa.DataType) -> int | None:
    """The index of the first value that does not cast to ``kind``, or None if all do.

    A binary search over casts of slices, so that the answer is pyarrow's own rule of what
    converts (which Python's ``float`` does not share: "1e5" and "inf" pass, " 2" fails).
    """
    if _casts(values, kind):
        return None
    low, high = 0, len(values)  # the first failure is in values[low:high]
    while high - low > 1:
        middle = (low + high) // 2
        if _casts(values.slice(low, middle - low), kind):
            low = middle
        else:
            high = middle
    return low


def explain_csv(
    path: Path, error: pa.ArrowInvalid, column_types: dict[str, pa.DataType], block: int
) -> str:
    """One line for a CSV file that pyarrow could not read: file, row, column and value."""
    source = repr(str(path))
    text = str(error).strip()
    column = re.match(r"In CSV column #(\d+): ", text)
    if column is not None:
        index, reason = int(column.group(1)), text[column.end() :]
        return _explain_value(path, source, index, reason, column_types, block)
    if text.startswith("CSV parse error") and (ragged := _first_ragged_row(path)) is not None:
        row, fields, header = ragged
        return f"{source} has {fields} fields at row {row}, where the header has {header}"
    if text == "Empty CSV file":
        return f"{source} is empty: a CSV file needs a header row"
    return f"cannot read {source}: {text.splitlines()[0]}"


def _explain_value(
    path: Path,
    source: str,
    index: int,
    reason: str,
    column_types: dict[str, pa.DataType],
    block: int,
) -> str:
    """The value of column ``index`` (from 0) that pyarrow could not convert, and where."""
    names = _header(path, block)
    name = names[index] if index < len(names) else f"#{index + 1}"
    kind = column_types.get(name)
    found = _first_unconvertible(path, name, kind, block) if kind is not None else None
    if kind is None or found is None:
        return f"cannot read {source}, column {name!r}: {reason}"
    row, value = found
    return (
        f"{source} has {value!r} at row {row}, column {name!r}, where {expected(kind)} is expected"
    )


def _casts(values: pa.Array | pa.ChunkedArray, kind: pa.DataType) -> bool:
    try:
        pc.cast(values, kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return False
    return True


def _header(path: Path, block: int) -> list[str]:
    with pa.OSFile(str(path)) as file:
        reader = pa_csv.open_csv(
            file,
            read_options=pa_csv.ReadOptions(block_size=block),
            convert_options=pa_csv.ConvertOptions(column_types={}, include_columns=[]),
        )
        try:
            return list(reader.schema.names)
        finally:
            reader.close()


def _first_unconvertible(
    path: Path, name: str, kind: pa.DataType, block: int
) -> tuple[int, str] | None:
    """(row, value) of the first value of column ``name`` that is not of type ``kind``."""
    start = 0
    for values in _text_column(path, name, block):
        index = first_failing(values, kind)
        if index is not None:
            return row_number(start + index), values[index].as_py()
        start += len(values)
    return None


def _text_column(path: Path, name: str, block: int) -> Iterator[pa.Array]:
    """Column ``name`` of a CSV file as text, block by block; missing values as nulls."""
    convert = pa_csv.ConvertOptions(
        column_types={name: pa.string()}, include_columns=[name], strings_can_be_null=True
    )
    with pa.OSFile(str(path)) as file:
        reader = pa_csv.open_csv(
            file, read_options=pa_csv.ReadOptions(block_size=block), convert_options=convert
        )
        try:
            for batch in reader:
                yield batch.column(0)
        except pa.ArrowInvalid:
            return  # the file breaks elsewhere too: no row to name
        finally:
            reader.close()


def _first_ragged_row(path: Path) -> tuple[int, int, int] | None:
    """(row, fields, header fields) of the first row whose field count is not the header's."""
    try:
        with path.open(newline="", encoding="utf-8", errors="replace") as file:
            records = csv.reader(file)
            header = next(records, [])
            for row, record in enumerate(records, start=2):
                if record and len(record) != len(header):
                    return row, len(record), len(header)
    except csv.Error:
        return None
    return None
