"""Prediction tables: written batch by batch, read back and scored, and every refusal's words.

The errors are checked word for word, in a later batch of a file read in small blocks, so
that the row named is counted across batches (a spreadsheet's numbering: the header is row 1).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from crossent._checks import sum_tolerance
from crossent.classifier import ModelCard, SoftmaxClassifier
from crossent.classifier.predictions import predict_batches, prediction_batch, score_file

TOLERANCE = sum_tolerance(torch.float64)  # how far from 1 a row may sum
GOOD_ROWS = 2000  # "a,0.5,0.5" rows before the one under test: several blocks of 4096 bytes
BAD_ROW = GOOD_ROWS + 2  # the row under test, as a spreadsheet numbers it


def predictions_file(folder: Path, last: str, good: str = "a,0.5,0.5") -> Path:
    """A CSV of GOOD_ROWS rows ``good`` (even predictions of label a), then the row ``last``."""
    path = folder / "p.csv"
    path.write_text("\n".join(["label,a,b", *[good] * GOOD_ROWS, last]) + "\n")
    return path


def refuses(path: Path, message: str, layout: str = "probs", **options: object) -> None:
    """Scoring ``path`` in blocks of 4 KiB raises a ValueError of exactly ``message``."""
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        score_file(path, "label", layout, block_bytes=4096, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("last", "message"),
    [
        ("b,1.5,0.0", "predictions must be probabilities in [0, 1]; {file} has 1.5 at row "
         f"{BAD_ROW}, column 'a'"),
        ("b,0.5,-0.25", "predictions must be probabilities in [0, 1]; {file} has -0.25 at row "
         f"{BAD_ROW}, column 'b'"),
        ("c,0.5,0.5", "{file}, column 'label', has the label 'c' at row "
         f"{BAD_ROW}, which is not one of the 2 classes ['a', 'b']"),
        ("a,,0.5", f"class column 'a' has a missing value at row {BAD_ROW} of {{file}}"),
        ("a,0.5,0.625", "predictions must sum to 1 over the 2 class columns (within "
         f"3.5e-04); row {BAD_ROW} of {{file}} sums to 1.125"),
    ],
)  # fmt: skip
def test_a_bad_row_in_a_later_block_is_named_by_file_row_and_column(
    tmp_path: Path, last: str, message: str
) -> None:
    path = predictions_file(tmp_path, last)
    refuses(path, message.format(file=repr(str(path))))


def test_class_columns_and_the_target_must_exist(tmp_path: Path) -> None:
    path = predictions_file(tmp_path, "a,0.5,0.5")
    columns = f"not found in {str(path)!r}; its columns are ['label', 'a', 'b']"
    refuses(path, f"column ['z'] {columns}", classes=["a", "z"])
    target = "target column ['y'] " + columns
    with pytest.raises(ValueError, match=f"^{re.escape(target)}$"):
        score_file(path, "y", "probs")


def test_the_layout_must_be_one_of_two(tmp_path: Path) -> None:
    expected = re.escape("`--layout` must be one of ('probs', 'log-probs'); got 'prob'")
    with pytest.raises(ValueError, match=f"^{expected}$"):
        score_file(predictions_file(tmp_path, "a,1,0"), "label", "prob")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=f"^{expected}$"):
        prediction_batch(["a", "b"], np.zeros((1, 2)), "prob")  # type: ignore[arg-type]


def test_a_probability_of_zero_is_a_class_ruled_out_not_an_error(tmp_path: Path) -> None:
    """p = 0 for a class other than the label costs nothing (and warns of no log 0); the
    label's own p = 0 is an infinite loss."""
    report = score_file(predictions_file(tmp_path, "a,1.0,0.0"), "label", "probs")
    assert report.total_nll_bits == pytest.approx(GOOD_ROWS)  # 1 bit per even row, 0 for the last
    report = score_file(predictions_file(tmp_path, "b,1.0,0.0"), "label", "probs")
    assert report.total_nll_bits == math.inf


def test_probabilities_and_log_probabilities_score_alike(tmp_path: Path) -> None:
    """The same predictions in either layout: the NLL by hand, -log2 of each label's p."""
    rows = [("a", 0.25, 0.75), ("b", 0.25, 0.75), ("a", 1.0, 0.0), ("a", 0.5, 0.5)]
    probs, logs = tmp_path / "probs.csv", tmp_path / "logs.csv"
    probs.write_text("label,a,b\n" + "".join(f"{y},{p!r},{q!r}\n" for y, p, q in rows))
    logs.write_text(
        "label,a,b\n"
        + "".join(
            f"{y},{math.log(p)!r},{(math.log(q) if q else -math.inf)!r}\n" for y, p, q in rows
        )
    )
    by_hand = 2 + math.log2(4 / 3) + 0 + 1
    for path, layout in ((probs, "probs"), (logs, "log-probs")):
        report = score_file(path, "label", layout)  # type: ignore[arg-type]
        assert report.total_nll_bits == pytest.approx(by_hand, rel=1e-12)
        assert report.accuracy == 0.75


def test_log_probabilities_must_be_at_most_zero(tmp_path: Path) -> None:
    half = math.log(0.5)
    path = predictions_file(tmp_path, "b,-1,0.5", f"a,{half!r},{half!r}")
    refuses(
        path,
        f"predictions must be log-probabilities, ≤ 0; {str(path)!r} has 0.5 at row {BAD_ROW}, "
        "column 'b'",
        "log-probs",
    )


def test_the_range_rules_end_where_the_sum_rule_takes_over(tmp_path: Path) -> None:
    """A value of exactly 1 + tolerance (or log1p(tolerance)) is inside the range rule: the
    row is refused for its sum, by the rule that names the sum."""
    half = math.log(0.5)
    for layout, value, other, good in (
        ("probs", 1 + TOLERANCE, 0.0, "a,0.5,0.5"),
        ("log-probs", math.log1p(TOLERANCE), -math.inf, f"a,{half!r},{half!r}"),
    ):
        path = predictions_file(tmp_path, f"a,{value!r},{other!r}", good)
        refuses(
            path,
            "predictions must sum to 1 over the 2 class columns (within 3.5e-04); row "
            f"{BAD_ROW} of {str(path)!r} sums to 1.00035",
            layout,
        )


def test_ten_confidence_bins_unless_asked(tmp_path: Path) -> None:
    path = predictions_file(tmp_path, "a,0.5,0.5")
    assert len(score_file(path, "label", "probs").confidence_bins) == 10
    assert len(score_file(path, "label", "probs", bins=3).confidence_bins) == 3


# ---- predictions written by a model, batch by batch ----

CARD = ModelCard(["a", "b"], ["x"], "y", [], [0.0], [1.0])
GOOD = pa.RecordBatch.from_pydict({"x": [0.0, 2.0], "y": ["a", "b"]})


@pytest.mark.parametrize(
    ("x", "label", "message"),
    [
        (math.nan, "b", "features must be finite; 'new.csv' has nan at row 7, column 'x'"),
        (None, "b", "feature 'x' has a missing value at row 7 of 'new.csv'"),
        (1.0, "c", "'new.csv', column 'y', has the label 'c' at row 7, which is not one of the 2 "
                   "classes ['a', 'b']"),
    ],
)  # fmt: skip
def test_a_bad_row_of_a_later_batch_is_named_by_its_row_in_the_file(
    x: float | None, label: str, message: str
) -> None:
    bad = pa.RecordBatch.from_pydict({"x": [0.0, x], "y": ["a", label]})
    batches = predict_batches(SoftmaxClassifier(CARD), [GOOD, GOOD, bad], "probs", "'new.csv'")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        list(batches)


def test_the_label_column_must_not_be_named_as_a_class() -> None:
    with pytest.raises(ValueError, match=r"^the label column 'a' has the name of a class$"):
        prediction_batch(["a", "b"], np.zeros((1, 2)), "probs", ("a", pa.array(["a"])))
