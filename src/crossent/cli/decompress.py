"""``crossent decompress``: the labels back, from the file and the same model and features."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossent.cli._output import add_force, claimed_file
from crossent.cli._stdio import is_stdio

if TYPE_CHECKING:
    from rich.console import Console


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "decompress",
        help="decode labels compressed by `crossent compress`",
        description=(
            "Decode the labels of a file written by `crossent compress`, with the same run "
            "folder and the same features (DATA); a different model, different features or a "
            "damaged file is an error, never wrong labels."
        ),
    )
    parser.add_argument("run_folder", metavar="RUN", type=Path, help="run folder of a training")
    parser.add_argument("data", metavar="DATA", type=Path, help="CSV or Parquet of features")
    parser.add_argument("compressed", metavar="FILE", type=Path, help="the compressed labels")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="labels to write, .csv or .parquet; - writes CSV to standard output",
    )
    add_force(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> None:
    import numpy as np
    import pyarrow as pa

    from crossent.classifier.data import file_kind, recognise_table, write_table
    from crossent.cli import _labels
    from crossent.coding.labels import decompress

    if not is_stdio(args.output):
        file_kind(args.output)
    output = claimed_file(
        args.output, force=args.force, option="-o/--output", recognise=recognise_table
    )
    with output as temporary:
        model, _, features = _labels.inputs(args.run_folder, args.data)
        labels = decompress(
            args.compressed,
            _labels.weights_of(model, features),
            identity=_labels.identity(args.run_folder, features),
            rows=len(features),
        )
        names = np.asarray(model.card.classes)[labels]
        write_table(temporary, pa.table({model.card.target: pa.array(names)}))
    where = "standard output" if is_stdio(args.output) else args.output
    console.print(f"decoded {len(labels):,} labels into {where}")
