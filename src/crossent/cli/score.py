"""``crossent score``: log loss in bits of any model's predicted probabilities, streamed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossent.classifier.options import LAYOUTS
from crossent.cli._output import add_force, add_json, claimed_json, write_json
from crossent.cli._progress import file_progress
from crossent.cli._stdio import STDIN_NAME, is_stdio, readable

if TYPE_CHECKING:
    from rich.console import Console


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "score",
        help="score predicted probabilities against labels: NLL in bits, decomposition, ECE",
        description=(
            "Score any model's predictions: a CSV or Parquet file with a label column and one "
            "column per class (named by the class) of probabilities or natural-log "
            "probabilities. Reports mean and total NLL in bits, H(Y), the decomposition "
            "uncertainty − resolution + reliability, top-label ECE and per-class figures. "
            "Streams the file in constant memory."
        ),
    )
    parser.add_argument(
        "predictions",
        metavar="PREDICTIONS",
        type=Path,
        help="CSV or Parquet predictions file; - reads CSV from standard input",
    )
    parser.add_argument("--target", required=True, help="the label column")
    parser.add_argument(
        "--layout",
        choices=LAYOUTS,
        default="probs",
        help="class columns hold probabilities (default) or natural logs of them",
    )
    parser.add_argument(
        "--classes",
        type=lambda text: text.split(","),
        metavar="C1,C2,...",
        help="the class columns (default: every column but --target)",
    )
    parser.add_argument(
        "--bins",
        type=int,
        default=10,
        help="confidence bins of the decomposition and ECE (default 10)",
    )
    add_json(parser)
    add_force(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> None:
    from crossent.classifier.predictions import score_file
    from crossent.cli._report import print_report

    name = STDIN_NAME if is_stdio(args.predictions) else str(args.predictions)
    with (
        claimed_json(args.json, force=args.force) as temporary,
        readable(args.predictions) as predictions,
        file_progress(console, f"scoring {name}") as on_bytes,
    ):
        report = score_file(
            predictions,
            args.target,
            args.layout,
            classes=args.classes,
            bins=args.bins,
            on_bytes=on_bytes,
        )
        write_json(temporary, report.to_dict())
    print_report(console, report, f"{name} ({report.examples:,} rows)")
    if args.json is not None and not is_stdio(args.json):
        console.print(f"report written to {args.json}")
