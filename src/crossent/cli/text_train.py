"""``crossent text train``: fit a small byte-level language model on the CPU, in minutes."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from crossent.cli._output import FORCE_HELP

_DEFAULT_MINUTES = 3.0


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "train",
        help="train a small byte-level model of text on the CPU",
        description=(
            "Fit crossent's byte model (hashed contexts, match predictions, one hidden layer; "
            "see docs/text.md) to the text of CORPUS by Adam on its cross entropy in bits per "
            "byte, and write it to a model folder that `crossent text score`, `compress` and "
            "`decompress` take. Trains for --minutes (default 3) or --steps, whichever ends "
            "first, and reports held-out bits per byte as it goes."
        ),
    )
    parser.add_argument(
        "corpus", metavar="CORPUS", type=Path, nargs="+", help="text files or folders of them"
    )
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.add_argument(
        "--include",
        default="*",
        metavar="GLOB",
        help="in folders, the file names to read, e.g. '*.py' (default all; files that are "
        "not UTF-8 text are skipped)",
    )
    held = parser.add_mutually_exclusive_group()
    held.add_argument(
        "--held-out",
        type=float,
        default=0.05,
        metavar="FRACTION",
        help="hold out every k-th file, k = 1/FRACTION (one file: its last FRACTION) "
        "(default 0.05; 0: none)",
    )
    held.add_argument("--held-out-file", type=Path, metavar="FILE", help="hold out this text")
    parser.add_argument("--minutes", type=float, help=f"time budget (default {_DEFAULT_MINUTES:g})")
    parser.add_argument("--steps", type=int, default=0, help="step budget (default none)")
    parser.add_argument("--threads", type=int, help="CPU threads (default torch's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=1024, help="bytes per step")
    parser.add_argument("--lr", type=float, default=0.003, help="Adam's learning rate")
    parser.add_argument(
        "--eval-seconds", type=float, default=30.0, help="held-out figures every so many seconds"
    )
    parser.add_argument(
        "--eval-bytes",
        type=int,
        default=1 << 18,
        help="held-out bytes measured each time (default 262144: the first 256 KiB)",
    )
    parser.add_argument(
        "--keep",
        choices=("best", "last"),
        default="best",
        help="the model to write: of the evaluation with the fewest held-out bits (default), "
        "or of the last step",
    )
    _add_shape_options(parser)
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)
    parser.set_defaults(run=run, command="text train")


def _add_shape_options(parser: Any) -> None:
    parser.add_argument(
        "--orders", type=_orders, default=(1, 2, 3, 4, 5, 6), metavar="K1,K2,...",
        help="context orders: bytes before each byte that are hashed (default 1,...,6)",
    )  # fmt: skip
    parser.add_argument(
        "--matches", type=_orders, default=(4, 6, 8, 12, 16, 24, 32), metavar="M1,M2,...",
        help="match orders: context lengths whose last occurrence predicts the next byte",
    )  # fmt: skip
    parser.add_argument("--bucket-bits", type=int, default=18, help="log2 rows of hashed tables")
    parser.add_argument("--width", type=int, default=16, help="embedding width")
    parser.add_argument("--hidden", type=int, default=256, help="hidden units")
    parser.add_argument(
        "--lookback", type=int, default=1 << 20, help="bytes a match may lie back (context)"
    )


def run(args: argparse.Namespace, console: Console) -> None:
    import numpy as np
    import torch

    from crossent._files import claimed
    from crossent.text import corpus, train
    from crossent.text.byte_model import ByteConfig, recognise
    from crossent.text.features import FeatureSpec
    from crossent.text.source import read_text

    spec = FeatureSpec(args.orders, args.bucket_bits, args.matches, args.lookback)
    config = ByteConfig(spec, args.width, args.hidden)
    minutes = args.minutes if args.minutes is not None or args.steps else _DEFAULT_MINUTES
    options = train.TrainOptions(
        steps=args.steps,
        minutes=minutes,
        batch_size=args.batch_size,
        learning_rate=args.lr,
        seed=args.seed,
        eval_seconds=args.eval_seconds,
        eval_bytes=args.eval_bytes,
        keep_best=args.keep == "best",
    )
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"`--threads` must be ≥ 1; got {args.threads}")
        torch.set_num_threads(args.threads)
    with claimed(
        args.out, folder=True, force=args.force, option="--out", recognise=recognise
    ) as temporary:
        texts, skipped = corpus.gather(args.corpus, args.include)
        held_text = None
        if args.held_out_file is not None:
            held_text = (args.held_out_file, read_text(args.held_out_file))
        split = corpus.split(texts, args.held_out, held_text)
        console.print(
            f"training on {len(split.train):,} bytes of {len(split.train_files):,} files"
            + (f" ({len(skipped):,} skipped: not UTF-8 text)" if skipped else "")
            + f", held out {len(split.held_out):,} bytes; {torch.get_num_threads()} threads"
        )
        held = np.frombuffer(split.held_out, np.uint8) if split.held_out else None
        started = time.strftime("%Y-%m-%d %H:%M:%S")
        with _StepLine(console) as line:
            result = train.train(
                np.frombuffer(split.train, np.uint8), held, config, options, line.step
            )
        training = {
            **{k: v for k, v in vars(options).items() if k != "steps"},
            "started": started,
            "steps": result.steps,
            "seconds": round(result.seconds, 1),
            "threads": torch.get_num_threads(),
            "train_bytes": len(split.train),
            "train_files": len(split.train_files),
            "held_out_bytes": len(split.held_out),
            "held_out_files": [str(p) for p in split.held_out_files][:1000],
            "step_limit": options.steps,
            "kept": result.kept,
        }
        result.model.save(temporary, training)
        (temporary / "history.json").write_text(json.dumps(result.history, indent=2) + "\n")
    last, kept = result.history[-1], result.kept
    held_bits = last.get("held_out_bits_per_byte")
    console.print(
        f"{result.steps:,} steps in {result.seconds / 60:.1f} min: train "
        f"{last['train_bits_per_byte']:.4f} bits per byte"
        + (f", held out {held_bits:.4f}" if held_bits is not None else "")
    )
    if kept is not last:
        console.print(
            f"kept the model of step {kept['step']:,} ({kept['seconds'] / 60:.1f} min): held "
            f"out {kept['held_out_bits_per_byte']:.4f} bits per byte"
        )
    console.print(f"model folder: {args.out}")


class _StepLine:
    """A status line with the step, the minutes and the running bits per byte."""

    def __init__(self, console: Console) -> None:
        self.status = console.status("training")
        self.recent: list[float] = []

    def __enter__(self) -> _StepLine:
        self.status.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.status.__exit__(*exc)

    def step(self, step: int, seconds: float, bits: float) -> None:
        self.recent = [*self.recent[-99:], bits]
        if step % 20 == 0:
            mean = sum(self.recent) / len(self.recent)
            self.status.update(
                f"training: step {step:,}, {seconds / 60:.1f} min, {mean:.4f} bits per byte"
            )


def _orders(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.replace(",", " ").split())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"must be whole numbers ≥ 1 such as 1,2,3; got {text!r}")
    return values
