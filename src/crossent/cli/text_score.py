"""``crossent text score``: a text's code length under a language model, beside compressors."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from crossent.cli._output import add_force, claimed_file
from crossent.cli._progress import token_progress
from crossent.cli.text import add_model_options

_BASES = {"2": 2.0, "e": math.e}


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "score",
        help="bits per byte, per token and perplexity of a text under a model",
        description=(
            "Score FILE (UTF-8 text) under MODEL: the total bits Σ −log2 q(token | tokens "
            "before), per byte, per token and per character, the perplexity, and the sizes "
            "gzip -9, bzip2 -9, xz -9 and zstd -19 give the same bytes. A Hugging Face model "
            "reads the text in sliding windows of --context tokens advancing by --stride."
        ),
    )
    parser.add_argument("file", metavar="FILE", type=Path, help="the text to score")
    add_model_options(
        parser,
        context_help="tokens a window holds (Hugging Face; default the model's positions, at "
        "most 1024), or bytes a match may lie back (byte model; default its own)",
    )
    parser.add_argument(
        "--base",
        choices=tuple(_BASES),
        default="2",
        help="2: bits (default); e: nats",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="write the figures as JSON")
    parser.add_argument(
        "--html", type=Path, metavar="PATH", help="write the text coloured by each token's bits"
    )
    parser.add_argument(
        "--no-compressors",
        action="store_true",
        help="leave out gzip, bzip2, xz and zstd (they take seconds on large files)",
    )
    add_force(parser)
    parser.set_defaults(run=run, command="text score")


def run(args: argparse.Namespace, console: Console) -> None:
    from crossent.text import html, models, score
    from crossent.text.source import read_text

    with contextlib.ExitStack() as stack:
        json_out = _claim(stack, args.json, args.force, "--json", _recognise_json)
        html_out = _claim(stack, args.html, args.force, "--html", html.recognise)
        text = read_text(args.file)
        lm = models.load(args.model, args.device)
        reading = lm.reading(args.context, args.stride)
        with token_progress(console, f"scoring {args.file}") as on_tokens:
            result = score.score(text, lm, reading, on_tokens, not args.no_compressors)
        figures = result.to_dict(_BASES[args.base])
        if json_out is not None:
            json_out.write_text(json.dumps(figures, indent=2) + "\n")
        if html_out is not None:
            spans = lm.token_spans(text, lm.tokenize(text))
            html_out.write_text(html.render(result, spans), encoding="utf-8")
    console.print(report(figures))
    for option, path in (("JSON", args.json), ("HTML", args.html)):
        if path is not None:
            console.print(f"{option} written to {path}")


def _claim(
    stack: contextlib.ExitStack, path: Path | None, force: bool, option: str, recognise: Any
) -> Path | None:
    if path is None:
        return None
    temporary: Path = stack.enter_context(
        claimed_file(path, force=force, option=option, recognise=recognise)
    )
    return temporary


def report(figures: dict[str, Any]) -> Table:
    """The model's figures, then each compressor's, per byte in the report's unit."""
    unit = figures["unit"]
    key = unit.replace(" ", "_")
    table = Table(
        title=(
            f"{figures['file']}: {figures['bytes']:,} bytes, {figures['characters']:,} "
            f"characters, {figures['tokens']:,} tokens under {figures['model']}"
        ),
        title_justify="left",
    )
    for header in ("", unit, f"{unit} per byte", f"{unit} per token", "perplexity"):
        table.add_column(header, justify="right" if header else "left")
    table.add_row(
        "the model",
        f"{figures[f'total_{key}']:,.1f}",
        f"{figures[f'{key}_per_byte']:.4f}",
        f"{figures[f'{key}_per_token']:.4f}",
        f"{figures['perplexity_per_token']:.3f}",
    )
    for name, found in figures["compressors"].items():
        per_byte = found[f"{key}_per_byte"]
        if per_byte is None:
            table.add_row(name, "", found["note"], "", "")
        else:
            table.add_row(name, f"{per_byte * figures['bytes']:,.1f}", f"{per_byte:.4f}", "", "")
    return table


def _recognise_json(path: Path) -> str | None:
    """None if ``path`` holds a JSON object, as the reports this command writes do."""
    try:
        loaded = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        loaded = None
    return None if isinstance(loaded, dict) else "is not a JSON report"
