"""``crossent text``: text in bits under a language model (score, compress, decompress, train).

Each subcommand is a module of its own (``text_score``, ...); this one only groups them, and
imports nothing heavy: the models load when a subcommand runs.
"""

from __future__ import annotations

import importlib
from typing import Any

SUBCOMMANDS = ("score", "compress", "decompress", "train")


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "text",
        help="score, compress and decompress text under a language model; train a byte model",
        description=(
            "Text in bits: a language model's cross entropy on a text is the size of the text "
            "coded by the model. `score` reports it (bits per byte, per token, perplexity) "
            "beside gzip, bzip2, xz and zstd; `compress` writes the coded file and "
            "`decompress` reads it back; `train` fits a small byte-level model on the CPU."
        ),
    )
    subcommands = parser.add_subparsers(dest="text_command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"crossent.cli.text_{name}").add_parser(subcommands)


def add_model_options(parser: Any, *, context_help: str) -> None:
    """``--model``, ``--context``, ``--stride`` and ``--device``: how a model reads text."""
    parser.add_argument(
        "--model",
        required=True,
        metavar="MODEL",
        help="a model folder: from `crossent text train`, or a local Hugging Face causal LM",
    )
    parser.add_argument("--context", type=_positive, metavar="N", help=context_help)
    parser.add_argument(
        "--stride",
        type=_positive,
        metavar="N",
        help="Hugging Face models: tokens each window scores after the first (default half "
        "the context)",
    )
    parser.add_argument(
        "--device",
        help="Hugging Face models: where the model runs, e.g. cpu or cuda (default: a GPU if "
        "there is one)",
    )


def _positive(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number ≥ 1; got {text!r}")
    return value
