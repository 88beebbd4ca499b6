"""``crossent score``: log loss in bits of any model's predicted probabilities, streamed."""

from __future__ import annotations

import argparse
import contextlib
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from crossent.classifier.predictions import LAYOUTS, score_file
from crossent.cli._output import add_force, claimed_file
from crossent.cli._progress import file_progress
from crossent.cli._report import print_report


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
        "predictions", metavar="PREDICTIONS", type=Path, help="CSV or Parquet predictions file"
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
    parser.add_argument("--json", type=Path, help="also write the report to this JSON file")
    add_force(parser)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> None:
    output: contextlib.AbstractContextManager[Path | None] = contextlib.nullcontext()
    if args.json is not None:
        output = claimed_file(args.json, force=args.force, option="--json", recognise=_recognise)
    with output as temporary, file_progress(console, f"scoring {args.predictions}") as on_bytes:
        report = score_file(
            args.predictions,
            args.target,
            args.layout,
            classes=args.classes,
            bins=args.bins,
            on_bytes=on_bytes,
        )
        if temporary is not None:
            temporary.write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    print_report(console, report, f"{args.predictions} ({report.examples:,} rows)")
    if args.json is not None:
        console.print(f"report written to {args.json}")


def _recognise(path: Path) -> str | None:
    """None if ``path`` holds a JSON object, as the reports this command writes do."""
    with path.open("rb") as file:
        start = file.read(4096).lstrip()
    return None if start.startswith(b"{") else "is not a JSON report"
