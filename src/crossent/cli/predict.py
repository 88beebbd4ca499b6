"""``crossent predict``: class probabilities of a trained model for new rows."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossent.classifier.options import LAYOUTS
from crossent.cli._output import add_force, claimed_file
from crossent.cli._progress import file_progress
from crossent.cli._stdio import STDIN_NAME, is_stdio, readable

if TYPE_CHECKING:
    from rich.console import Console


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "predict",
        help="write a trained model's class probabilities for the rows of a file",
        description=(
            "Write p(class | x) of a trained model (a run folder of `crossent train`) for every "
            "row of DATA: one column per class, after the label column if DATA has one "
            "(its labels are checked against the model's classes). Streams: any size of DATA."
        ),
    )
    parser.add_argument("run_folder", metavar="RUN", type=Path, help="run folder of a training")
    parser.add_argument(
        "data",
        metavar="DATA",
        type=Path,
        help="CSV or Parquet file of features; - reads CSV from standard input",
    )
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="predictions file to write, .csv or .parquet; - writes CSV to standard output",
    )
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="probs",
        help="probabilities (default) or natural-log probabilities",
    )
    add_force(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> None:
    import pyarrow as pa

    from crossent.classifier import model as saved_model
    from crossent.classifier.data import file_kind, recognise_table, stream, write_batches
    from crossent.classifier.predictions import predict_batches

    model = saved_model.load(args.run_folder)
    card = model.card
    types = {**dict.fromkeys(card.feature_names, pa.float64()), card.target: pa.string()}
    if not is_stdio(args.output):
        file_kind(args.output)
    output = claimed_file(
        args.output, force=args.force, option="-o/--output", recognise=recognise_table
    )
    name = STDIN_NAME if is_stdio(args.data) else str(args.data)
    with (
        output as temporary,
        readable(args.data) as data,
        file_progress(console, f"predicting {name}") as on_bytes,
    ):
        batches = stream(data, types, on_bytes=on_bytes)
        with contextlib.closing(batches):  # the file is closed now, not whenever, on errors too
            predictions = predict_batches(model, batches, args.layout, repr(str(data)))
            rows = write_batches(temporary, predictions)
    where = "standard output" if is_stdio(args.output) else args.output
    console.print(f"wrote {rows:,} rows × {len(card.classes)} classes ({args.layout}) to {where}")
