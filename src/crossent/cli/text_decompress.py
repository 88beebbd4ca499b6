"""``crossent text decompress``: the text back from a file of ``crossent text compress``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console

from crossent.cli._output import add_force, claimed_file
from crossent.cli._progress import token_progress
from crossent.cli._stdio import is_stdio
from crossent.cli.text import add_model_options


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "decompress",
        help="decode a file of `crossent text compress` with the same model",
        description=(
            "Decode FILE, written by `crossent text compress`, with the same model: the same "
            "bytes come back, or an error (another model, another context or stride, damaged "
            "bytes, or distributions that differ from the compressing machine's), never "
            "other text."
        ),
    )
    parser.add_argument("compressed", metavar="FILE", type=Path, help="the compressed text")
    add_model_options(
        parser, context_help="must be the one it was compressed with (default: the file's)"
    )
    parser.add_argument(
        "-o", "--output", type=Path, required=True,
        help="text file to write; - writes to standard output",
    )  # fmt: skip
    add_force(parser)
    parser.set_defaults(run=run, command="text decompress")


def run(args: argparse.Namespace, console: Console) -> None:
    from crossent.text import coding, models

    output = claimed_file(args.output, force=args.force, option="-o/--output", recognise=_text)
    with output as temporary:
        coding.coder("crossent text decompress")  # before the model loads
        coding.read(args.compressed)  # a damaged file is refused before the model loads
        lm = models.load(args.model, args.device)
        with token_progress(console, f"decompressing {args.compressed}") as on_tokens:
            data = coding.decompress(args.compressed, lm, args.context, args.stride, on_tokens)
        temporary.write_bytes(data)
    where = "standard output" if is_stdio(args.output) else args.output
    console.print(f"decoded {len(data):,} bytes into {where}")


def _text(path: Path) -> str | None:
    """None if ``path`` holds UTF-8 text without NUL bytes, as this command writes."""
    data = path.read_bytes()
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return "is not a text file"
    return "is not a text file" if b"\0" in data else None
