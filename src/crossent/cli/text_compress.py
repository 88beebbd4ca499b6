"""``crossent text compress``: a text coded under a language model, ≈ its bits in size."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from crossent.cli._output import add_force, claimed_file
from crossent.cli._progress import token_progress
from crossent.cli.text import add_model_options


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "compress",
        help="code a text under a model: a file of about the model's bits",
        description=(
            "Range-code each token of FILE with the model's distribution given the tokens "
            "before it. The payload is at most score's total bits + N·(−log2(1 − V/2^24)) + "
            "N·(−log2(1 − 2^−8)) + 64 for N tokens of V classes. `crossent text decompress` "
            "with the same model (and, for a Hugging Face model, the same machine and "
            "software) gives the bytes back."
        ),
    )
    parser.add_argument("file", metavar="FILE", type=Path, help="the text to compress")
    add_model_options(
        parser,
        context_help="as for `crossent text score`; decompression reads it from the file",
    )
    parser.add_argument("-o", "--output", type=Path, required=True, help="file to write")
    add_force(parser)
    parser.set_defaults(run=run, command="text compress")


def run(args: argparse.Namespace, console: Console) -> None:
    from crossent.text import coding, models
    from crossent.text.source import read_text
    from crossent.text.yardsticks import yardsticks

    output = claimed_file(
        args.output, force=args.force, option="-o/--output", recognise=coding.recognise
    )
    with output as temporary:
        coding.coder("crossent text compress")  # before the model loads
        text = read_text(args.file)
        lm = models.load(args.model, args.device)
        reading = lm.reading(args.context, args.stride)
        with token_progress(console, f"compressing {args.file}") as on_tokens:
            summary = coding.compress(temporary, lm, text, reading, on_tokens)
    xz = next(y for y in yardsticks(text.data) if y.name == "xz -9")
    console.print(report(summary, args.output, xz.compressed_bytes))


def report(summary: Any, path: Path, xz_bytes: int | None) -> Table:
    """The sizes side by side: what the model says the text costs, what it did cost."""
    n = summary.text_bytes
    table = Table(title=f"{n:,} bytes, {summary.tokens:,} tokens → {path}", title_justify="left")
    for header in ("", "bits", "bits per byte", ""):
        table.add_column(header, justify="right" if header else "left")
    rows = [
        ("the model", summary.model_bits, "Σ −log2 q(token): score's total"),
        ("quantised model", summary.quantised_bits, "q rounded to 24-bit frequencies"),
        ("compressed (payload)", summary.payload_bits, "what the range coder wrote"),
        ("bound on the payload", summary.bound_bits, "model + quantisation + coder + 64"),
        ("whole file", 8 * summary.file_bytes, "with header and checksum"),
    ]
    if xz_bytes is not None:
        rows.append(("xz -9", 8 * xz_bytes, "the same bytes"))
    for name, bits, note in rows:
        table.add_row(name, f"{bits:,.1f}", f"{bits / n:.4f}" if math.isfinite(bits) else "", note)
    return table
