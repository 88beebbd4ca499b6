"""Tables of predictions: written by a model, read back and scored in constant memory.

A predictions table has a label column (named as the model's target; optional when only
predicting) and one column per class, named by the class, holding p(class | x) (``"probs"``)
or its natural log (``"log-probs"``). Any model's predictions in this layout can be scored.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import torch

from crossent._checks import sum_tolerance
from crossent.classifier._locate import row_number
from crossent.classifier.data import (
    BLOCK_BYTES,
    check_columns,
    check_no_missing,
    column_names,
    encode_labels,
    feature_matrix,
    stream,
)
from crossent.classifier.evaluate import Report, Scorecard
from crossent.classifier.model import SoftmaxClassifier
from crossent.classifier.options import LAYOUTS, Layout


def prediction_batch(
    classes: list[str],
    log_probs: np.ndarray,
    layout: Layout,
    labels: tuple[str, pa.Array] | None = None,
) -> pa.RecordBatch:
    """A record batch of predictions; ``labels`` is (column name, label text) to carry along."""
    if layout not in LAYOUTS:
        raise ValueError(f"`--layout` must be one of {LAYOUTS}; got {layout!r}")
    values = np.exp(log_probs) if layout == "probs" else log_probs
    names, arrays = list(classes), [pa.array(values[:, j]) for j in range(len(classes))]
    if labels is not None:
        if labels[0] in classes:
            raise ValueError(f"the label column {labels[0]!r} has the name of a class")
        names, arrays = [labels[0], *names], [labels[1], *arrays]
    return pa.RecordBatch.from_arrays(arrays, names=names)


def predict_batches(
    model: SoftmaxClassifier, batches: Iterable[pa.RecordBatch], layout: Layout, source: str
) -> Iterator[pa.RecordBatch]:
    """Predictions for each batch of rows; a target column, if present, is checked and kept.

    Args:
        model: the trained model.
        batches: record batches holding the model's feature columns.
        layout: "probs" (p(class | x)) or "log-probs" (natural logs), one column per class.
        source: what the rows came from, for messages.

    Returns:
        A lazy iterator of record batches: the label column (if any), then one per class.

    >>> from crossent.classifier import ModelCard, SoftmaxClassifier
    >>> card = ModelCard(["a", "b"], ["x"], "y", [], [0.0], [1.0])
    >>> rows = pa.RecordBatch.from_pydict({"x": [0.0, 2.0], "y": ["a", "b"]})
    >>> [batch] = predict_batches(SoftmaxClassifier(card), [rows], "probs", "'new.csv'")
    >>> batch.schema.names
    ['y', 'a', 'b']
    """
    card = model.card
    first_row = 0
    for batch in batches:
        table = pa.Table.from_batches([batch])
        features = feature_matrix(table, card.feature_names, source, first_row=first_row)
        labels = None
        if card.target in table.column_names:
            column = table.column(card.target)
            encode_labels(
                column, card.classes, f"{source}, column {card.target!r},", first_row=first_row
            )
            labels = (card.target, column.combine_chunks().cast(pa.string()))
        yield prediction_batch(card.classes, model.log_probs(features), layout, labels)
        first_row += batch.num_rows


def score_file(
    path: str | os.PathLike[str],
    target: str,
    layout: Layout,
    *,
    classes: Sequence[str] | None = None,
    bins: int = 10,
    on_bytes: Callable[[int, int], None] | None = None,
    block_bytes: int = BLOCK_BYTES,
) -> Report:
    """Score a predictions file against its label column ``target``, batch by batch.

    ``classes`` names the class columns; by default every column but ``target``. Memory is
    some 40 times ``block_bytes``, the size of the blocks read, whatever the size of the file.

    Args:
        path: a ``.csv`` or ``.parquet`` file of predictions.
        target: its label column.
        layout: the class columns hold "probs" or "log-probs" (natural logs).
        classes: the class columns; None: every column but ``target``.
        bins: confidence bins of the decomposition and the ECE.
        on_bytes: ``on_bytes(done, total)`` as the file is read, for a progress bar.
        block_bytes: bytes read at a time.

    Returns:
        The :class:`~crossent.classifier.Report`: NLL in bits and nats, and the rest.

    >>> import tempfile
    >>> from pathlib import Path
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = Path(folder.name) / "p.csv"
    >>> _ = path.write_text("label,a,b\\na,0.5,0.5\\nb,0.25,0.75\\n")
    >>> round(score_file(path, "label", "probs").total_nll_bits, 6)   # 1 + log2(4/3) bits
    1.415037
    >>> folder.cleanup()
    """
    if layout not in LAYOUTS:
        raise ValueError(f"`--layout` must be one of {LAYOUTS}; got {layout!r}")
    source = f"{os.fspath(path)!r}"
    names = list(classes) if classes is not None else _class_columns(path, target)
    types = {target: pa.string(), **dict.fromkeys(names, pa.float64())}
    scorecard = Scorecard(names, bins)
    first_row = 0
    batches = stream(path, types, on_bytes=on_bytes, block_bytes=block_bytes)
    with contextlib.closing(batches):  # the file is closed now, not whenever, on an error too
        for batch in batches:
            table = pa.Table.from_batches([batch])
            check_columns(table.column_names, [target, *names], "column", source)
            labels = encode_labels(
                table.column(target), names, f"{source}, column {target!r},", first_row=first_row
            )
            values = np.column_stack(
                [_floats(table.column(n), n, first_row, source) for n in names]
            )
            scorecard.update(_log_probs(values, layout, names, first_row, source), labels)
            first_row += batch.num_rows
    return scorecard.report()


def _class_columns(path: str | os.PathLike[str], target: str) -> list[str]:
    """Every column of the file but ``target``."""
    header = column_names(path)
    check_columns(header, [target], "target column", f"{os.fspath(path)!r}")
    return [name for name in header if name != target]


def _floats(column: pa.ChunkedArray, name: str, first_row: int, source: str) -> np.ndarray:
    check_no_missing(column, f"class column {name!r}", source, first_row)
    return np.asarray(column.to_numpy(), dtype=np.float64)


def _log_probs(
    values: np.ndarray, layout: Layout, names: Sequence[str], first_row: int, source: str
) -> np.ndarray:
    """Natural-log probabilities of a checked batch: no NaN, in range, rows summing to 1."""
    tolerance = sum_tolerance(torch.float64)
    if layout == "probs":
        rule, bad = "must be probabilities in [0, 1]", ~((values >= 0) & (values <= 1 + tolerance))
    else:
        rule, bad = "must be log-probabilities, ≤ 0", ~(values <= np.log1p(tolerance))
    if bad.any():
        row, col = (int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"predictions {rule}; {source} has {float(values[row, col])!r} at row "
            f"{row_number(first_row + row)}, column {names[col]!r}"
        )
    probs = values if layout == "probs" else np.exp(values)
    sums = probs.sum(axis=1)
    off = np.abs(sums - 1) > tolerance
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise ValueError(
            f"predictions must sum to 1 over the {len(names)} class columns (within "
            f"{tolerance:.1e}); row {row_number(first_row + row)} of {source} sums to "
            f"{sums[row]:.6g}"
        )
    with np.errstate(divide="ignore"):  # log 0 = −inf: a class the model rules out
        return np.log(values) if layout == "probs" else values
