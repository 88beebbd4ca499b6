"""``crossent compress``: code the labels of a table with a trained model's predictions."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossent.cli._output import add_force, add_json, claimed_file, claimed_json, write_json
from crossent.cli._stdio import is_stdio

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from crossent.coding.labels import Summary


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "compress",
        help="compress the labels of DATA with a trained model's predictions",
        description=(
            "Code each label of DATA with the model's predicted distribution for its row "
            "(constriction's range coder): the file is about the NLL in bits, and the report "
            "compares it with a code that ignores the features, N·H(Y)."
        ),
    )
    parser.add_argument("run_folder", metavar="RUN", type=Path, help="run folder of a training")
    parser.add_argument("data", metavar="DATA", type=Path, help="CSV or Parquet with labels")
    parser.add_argument("--target", required=True, help="the label column of DATA")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        help="file to write; - writes it to standard output",
    )
    add_json(parser)
    add_force(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> None:
    from crossent.classifier.data import check_columns, encode_labels
    from crossent.cli import _labels
    from crossent.coding.labels import compress, recognise

    output = claimed_file(
        args.output,
        force=args.force,
        option="-o/--output",
        recognise=recognise,
        stdout_suffix=".xent",
    )
    with claimed_json(args.json, force=args.force) as json_file, output as temporary:
        model, table, features = _labels.inputs(args.run_folder, args.data, args.target)
        check_columns(table.column_names, [args.target], "target column", repr(str(args.data)))
        labels = encode_labels(
            table.column(args.target),
            model.card.classes,
            f"{str(args.data)!r}, column {args.target!r},",
        )
        summary = compress(
            temporary,
            labels,
            _labels.weights_of(model, features),
            identity=_labels.identity(args.run_folder, features),
            chunk_rows=_labels.chunk_rows(model),
        )
        write_json(json_file, numbers(summary))
    where = "standard output" if is_stdio(args.output) else str(args.output)
    console.print(report(summary, where))


def numbers(summary: Summary) -> dict[str, Any]:
    """The report's numbers for ``--json``: every size in bits, as the table shows them."""
    return {
        **dataclasses.asdict(summary),
        "overhead_bits": summary.overhead_bits,
        "saved_bits": summary.label_entropy_bits - summary.compressed_bits,
        "file_bits": 8 * summary.file_bytes,
    }


def report(summary: Summary, path: str) -> Table:
    """The sizes side by side: what the model says the labels cost, what they did cost."""
    from rich.table import Table

    n = summary.labels
    table = Table(
        title=f"{n:,} labels of {summary.classes:,} classes → {path}", title_justify="left"
    )
    for header in ("", "bits", "bits per label", ""):
        table.add_column(header, justify="right" if header else "left")
    rows = [
        ("NLL of the model", summary.nll_bits, "Σ −log2 q(y): the ideal code length"),
        ("NLL, quantised model", summary.quantised_nll_bits, "q rounded to 24-bit frequencies"),
        ("compressed (payload)", summary.compressed_bits, "what the range coder wrote"),
        ("overhead", summary.overhead_bits, "payload − quantised NLL"),
        ("whole file", 8 * summary.file_bytes, "with header and checksum"),
        ("without the features", summary.label_entropy_bits, "N·H(Y): labels' own entropy"),
        (
            "saved by the model",
            summary.label_entropy_bits - summary.compressed_bits,
            "N·H(Y) − payload: the model's information",
        ),
    ]
    for name, bits, note in rows:
        table.add_row(name, f"{bits:,.1f}", f"{bits / n:.4f}", note)
    return table
