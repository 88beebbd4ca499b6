"""Tables in, checked arrays out: bundled sets, CSV and Parquet, and every bad-input message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from sklearn import datasets

from crossent.classifier.data import (
    BUNDLED,
    bundled,
    column_names,
    encode_labels,
    feature_matrix,
    labelled,
    read_table,
    split,
    stream,
    write_table,
)


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_sets_match_scikit_learn(name: str) -> None:
    data = bundled(name)
    loaded = getattr(datasets, f"load_{name}")()
    np.testing.assert_array_equal(data.features, loaded.data)
    assert len(data.classes) == len(loaded.target_names)
    # the labels are the same partition of the rows as scikit-learn's targets
    np.testing.assert_array_equal(np.unique(data.labels[loaded.target == 0]).size, 1)
    assert data.feature_names == [str(n) for n in loaded.feature_names]


def test_integer_labels_sort_as_numbers_and_are_named_as_text() -> None:
    table = pa.table({"x": [0.0, 1.0, 2.0, 3.0], "y": [10, 2, 10, 2]})
    data = labelled(table, "y", "t")
    assert data.classes == ["2", "10"]  # numeric order, not "10" < "2"
    np.testing.assert_array_equal(data.labels, [1, 0, 1, 0])


def test_string_labels_sort_alphabetically() -> None:
    data = labelled(pa.table({"x": [1.0, 2.0, 3.0], "y": ["b", "a", "c"]}), "y", "t")
    assert data.classes == ["a", "b", "c"]
    np.testing.assert_array_equal(data.labels, [1, 0, 2])


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_files_round_trip(tmp_path: Path, suffix: str) -> None:
    table = pa.table({"a": [1.5, 2.5, -1.0], "b": [1, 2, 3], "label": ["x", "y", "x"]})
    path = tmp_path / f"data{suffix}"
    write_table(path, table)
    data = labelled(read_table(path), "label", str(path))
    np.testing.assert_array_equal(data.features, [[1.5, 1], [2.5, 2], [-1, 3]])
    assert column_names(path) == ["a", "b", "label"]
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_stream_reads_every_row_in_blocks(tmp_path: Path, suffix: str) -> None:
    rows = 5000
    table = pa.table({"p": np.linspace(0, 1, rows), "label": [str(i % 3) for i in range(rows)]})
    path = tmp_path / f"big{suffix}"
    write_table(path, table)
    seen: list[tuple[int, int]] = []
    batches = list(
        stream(path, {"label": pa.string()}, block_bytes=4096, on_bytes=lambda *a: seen.append(a))
    )
    assert len(batches) > 3
    assert sum(b.num_rows for b in batches) == rows
    np.testing.assert_array_equal(
        np.concatenate([b.column("p").to_numpy() for b in batches]), table.column("p")
    )
    assert seen[-1] == (path.stat().st_size,) * 2


def test_split_is_stratified_and_reproducible() -> None:
    data = bundled("iris")
    train, test = split(data, 0.2, seed=3)
    again, _ = split(data, 0.2, seed=3)
    np.testing.assert_array_equal(train.features, again.features)
    assert len(test.labels) == 30
    np.testing.assert_array_equal(np.bincount(test.labels), [10, 10, 10])


# ---- bad input: each message names the argument, the rule and the value ----


def test_missing_target_lists_the_columns() -> None:
    table = pa.table({"a": [1.0], "b": [2.0]})
    with pytest.raises(
        ValueError,
        match=r"target column \['lable'\] not found in t; its columns "
        r"are \['a', 'b'\]",
    ):
        labelled(table, "lable", "t")


def test_non_numeric_features_are_named_with_row_and_value() -> None:
    table = pa.table({"a": [1.0, 2.0, 3.0], "colour": ["1.5", "blue", "red"], "y": [0, 1, 0]})
    with pytest.raises(
        ValueError, match=r"features must be numbers; t has 'blue' at row 3, column 'colour'"
    ):
        labelled(table, "y", "t")


@pytest.mark.parametrize(("value", "shown"), [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "-inf")])
def test_non_finite_features_give_row_and_column(value: float, shown: str) -> None:
    table = pa.table({"a": [1.0, 2.0, 3.0], "b": [0.0, 0.0, value], "y": [0, 1, 0]})
    with pytest.raises(ValueError, match=f"t has {shown} at row 4, column 'b'"):
        labelled(table, "y", "t")


def test_missing_feature_value_gives_row(tmp_path: Path) -> None:
    path = tmp_path / "gap.csv"
    path.write_text("a,b,y\n1,2,0\n3,,1\n")
    with pytest.raises(ValueError, match="feature 'b' has a missing value at row 3 of t"):
        labelled(read_table(path), "y", "t")


def test_row_numbers_are_a_spreadsheets_from_the_start_of_the_file() -> None:
    """Data row 1001 (counted from 0) is row 1003 of a spreadsheet: the header is row 1."""
    table = pa.table({"a": [1.0, np.nan]})
    with pytest.raises(ValueError, match="at row 1003, column 'a'"):
        feature_matrix(table, ["a"], "t", first_row=1000)


def test_a_single_class_cannot_be_classified() -> None:
    with pytest.raises(ValueError, match=r"at least 2 classes.*it holds only 'cat'"):
        labelled(pa.table({"a": [1.0, 2.0], "y": ["cat", "cat"]}), "y", "t")


def test_float_labels_are_refused() -> None:
    with pytest.raises(
        ValueError, match="t, column 'y', must hold integer or text labels; it holds double"
    ):
        labelled(pa.table({"a": [1.0, 2.0], "y": [0.5, 1.5]}), "y", "t")


@pytest.mark.parametrize("missing", [None, "", "  "])
def test_missing_label_gives_row(missing: str | None) -> None:
    with pytest.raises(ValueError, match="t, column 'y', has no label at row 3"):
        labelled(pa.table({"a": [1.0, 2.0, 3.0], "y": ["a", missing, "b"]}), "y", "t")


def test_unknown_label_is_named_with_its_row() -> None:
    with pytest.raises(
        ValueError,
        match=r"the label 'dog' at row 14, which is not one of the 2 "
        r"classes \['cat', 'cow'\]",
    ):
        encode_labels(pa.array(["cat", "dog"]), ["cat", "cow"], "data", first_row=11)


def test_a_class_with_one_example_cannot_be_split() -> None:
    data = labelled(pa.table({"a": [1.0, 2.0, 3.0], "y": ["a", "a", "b"]}), "y", "t")
    with pytest.raises(ValueError, match=r"at least 2 examples.*\['b'\] of t have 1"):
        split(data, 0.5, seed=0)


@pytest.mark.parametrize("size", [0.0, 1.0, -0.1, 1.5])
def test_test_size_must_be_a_fraction(size: float) -> None:
    with pytest.raises(ValueError, match=r"`--test-size` must be a fraction in \(0, 1\)"):
        split(bundled("iris"), size, seed=0)


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"must end in .csv or .parquet; got suffix '.txt'"):
        read_table(tmp_path / "data.txt")
    with pytest.raises(ValueError, match="no such file"):
        read_table(tmp_path / "absent.csv")


def test_unknown_bundled_set() -> None:
    with pytest.raises(ValueError, match="`--dataset` must be one of iris, wine"):
        bundled("mnist")


def test_parquet_and_csv_give_the_same_data(tmp_path: Path) -> None:
    table = pa.table({"a": np.arange(6.0), "y": [1, 2, 1, 2, 1, 2]})
    pa_csv.write_csv(table, tmp_path / "t.csv")
    pq.write_table(table, tmp_path / "t.parquet")
    one = labelled(read_table(tmp_path / "t.csv"), "y", "csv")
    two = labelled(read_table(tmp_path / "t.parquet"), "y", "parquet")
    np.testing.assert_array_equal(one.features, two.features)
    assert one.classes == two.classes == ["1", "2"]
