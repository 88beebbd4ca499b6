"""``crossent train``: fit the softmax classifier by SGD on the NLL and report it in bits."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crossent._files import OutputTaken
from crossent.classifier.options import BUNDLED, OBJECTIVES, SCHEDULES, STALL_TIMEOUT, SGDOptions
from crossent.cli._output import FORCE_HELP, add_json, claimed_json, write_json

if TYPE_CHECKING:  # imported where they run: `crossent train --help` imports no torch
    from rich.console import Console

    from crossent.classifier import run as runs
    from crossent.classifier.data import LabelledData
    from crossent.classifier.train import History

_DEFAULTS = SGDOptions()
MAX_PROCESSES = 256
_DEFAULT_FOLDERS = 100  # runs/NAME-TIMESTAMP, then -2, -3, …: two runs in one second


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "train",
        help="train a softmax classifier by SGD on the NLL; report it in bits",
        description=(
            "Train the softmax classifier of the article by minibatch SGD on the negative "
            "log-likelihood, on a CSV/Parquet file or a bundled data set, and write a run "
            "folder: model, metrics, held-out predictions and plots."
        ),
    )
    parser.add_argument("data", nargs="?", help="CSV or Parquet file (default: a bundled set)")
    parser.add_argument("--target", help="the label column of DATA (required with DATA)")
    parser.add_argument(
        "--dataset",
        default="digits",
        choices=BUNDLED,
        help="bundled scikit-learn data set used without DATA (default digits)",
    )
    parser.add_argument(
        "--test-size",
        type=float,
        default=0.25,
        help="fraction of rows held out, stratified (default 0.25)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the split, the initial weights and the batch order",
    )
    parser.add_argument(
        "--hidden",
        type=_widths,
        default=[],
        metavar="W1,W2,...",
        help="hidden layer widths of an MLP (default none: linear)",
    )
    parser.add_argument(
        "--objective",
        choices=OBJECTIVES,
        default=_DEFAULTS.objective,
        help="the loss minimised; all three are equal for one-hot labels",
    )
    parser.add_argument(
        "--lr",
        type=float,
        default=_DEFAULTS.learning_rate,
        help=f"learning rate (default {_DEFAULTS.learning_rate})",
    )
    parser.add_argument(
        "--schedule",
        choices=SCHEDULES,
        default=_DEFAULTS.schedule,
        help="learning rate schedule over all steps (default cosine)",
    )
    parser.add_argument("--momentum", type=float, default=_DEFAULTS.momentum)
    parser.add_argument(
        "--weight-decay",
        type=float,
        default=_DEFAULTS.weight_decay,
        help="λ of the penalty (λ/2)‖W‖² on weights, not biases",
    )
    parser.add_argument("--epochs", type=int, default=_DEFAULTS.epochs)
    parser.add_argument(
        "--nproc",
        type=_processes,
        default=1,
        metavar="N",
        help="train data-parallel on N local processes (torch.distributed, gloo); the "
        "losses and the model are those of one process up to float rounding (default 1)",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=STALL_TIMEOUT,
        metavar="SECONDS",
        help="with --nproc (or under torchrun): a process that finishes no step for this long "
        f"is named as hung and the run stopped (default {STALL_TIMEOUT:g})",
    )
    parser.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size)
    parser.add_argument(
        "--bins",
        type=int,
        default=10,
        help="confidence bins of the decomposition and ECE (default 10)",
    )
    parser.add_argument(
        "--no-reference",
        action="store_true",
        help="skip fitting scikit-learn's LogisticRegression for comparison",
    )
    parser.add_argument(
        "--out", type=Path, help="run folder to write (default runs/NAME-TIMESTAMP)"
    )
    add_json(parser)
    parser.add_argument("--force", action="store_true", help=FORCE_HELP)
    parser.set_defaults(run=run)


def run(args: argparse.Namespace, console: Console) -> None:
    from crossent.classifier.parallel import torchrun_rank

    rank = torchrun_rank()
    if rank is None:
        _train(args, console, rank)
        return
    if args.nproc > 1:
        raise ValueError(
            "`--nproc` starts processes of its own; under torchrun leave it out "
            "(torchrun's --nproc-per-node sets how many)"
        )
    import torch.distributed as dist

    # a rank waiting longer than --timeout in a collective fails, and torchrun stops the others
    from rich.console import Console

    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=args.timeout))
    try:
        _train(args, console if rank == 0 else Console(quiet=True), rank)
    finally:
        dist.destroy_process_group()


def _train(args: argparse.Namespace, console: Console, rank: int | None) -> None:
    """Train and write the run; as one rank of torchrun's processes when ``rank`` is set,
    where rank 0 alone writes the run folder and reports."""
    from crossent.classifier import run as runs
    from crossent.cli._report import print_report

    lead = rank in (None, 0)
    data = _load(args)
    options = SGDOptions(
        learning_rate=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        epochs=args.epochs,
        batch_size=args.batch_size,
        objective=args.objective,
        schedule=args.schedule,
        seed=args.seed,
    )
    # claimed before training: a taken or unwritable --out is refused at once, not at the end;
    # the JSON is written once the run folder it names is in place
    with claimed_json(args.json if lead else None, force=args.force) as json_file:
        with _run_folder(args) if lead else contextlib.nullcontext((None, None)) as (folder, temp):
            result = _fit(args, console, rank, data, options)
            if temp is not None:
                runs.write_into(result, temp)
        write_json(json_file, {**runs.metrics(result), "run_folder": str(folder)})
    if not lead:
        return
    print_report(console, result.report, f"held-out split ({len(result.held_out.labels):,} rows)")
    if result.reference is not None:
        console.print(
            f"scikit-learn LogisticRegression (C = {result.reference['C']:.4g}) on "
            f"the same split: mean NLL {result.reference['mean_nll_bits']:.4f} bits"
        )
    console.print(f"run folder: {folder}")


def _fit(
    args: argparse.Namespace,
    console: Console,
    rank: int | None,
    data: LabelledData,
    options: SGDOptions,
) -> runs.Run:
    """The training itself, with a progress bar per epoch."""
    from crossent.classifier import run as runs

    console.print(
        f"training on {data.source}: {len(data.labels):,} rows, "
        f"{len(data.feature_names)} features, {len(data.classes)} classes"
        + (f", {args.nproc} processes" if args.nproc > 1 else "")
        + (f", rank 0 of {os.environ['WORLD_SIZE']} (torchrun)" if rank is not None else "")
    )
    with _EpochBars(console, options.epochs) as bars:
        return runs.fit(
            data,
            options,
            hidden=args.hidden,
            test_size=args.test_size,
            bins=args.bins,
            reference=not args.no_reference and rank in (None, 0),
            processes=args.nproc,
            data_parallel=rank is not None,
            timeout=args.timeout,
            on_step=bars.step,
            on_epoch=bars.epoch_done,
        )


@contextlib.contextmanager
def _run_folder(args: argparse.Namespace) -> Iterator[tuple[Path, Path]]:
    """Claim the run folder: ``--out``, or runs/NAME-TIMESTAMP (then -2, -3, … if another
    run took it in the same second); yield it and the temporary folder to write."""
    from crossent.classifier import run as runs

    if args.out is not None:
        with runs.claim(args.out, replace=args.force) as temporary:
            yield args.out, temporary
        return
    base = _default_folder(args)
    for attempt in range(1, _DEFAULT_FOLDERS + 1):
        folder = base if attempt == 1 else base.with_name(f"{base.name}-{attempt}")
        stack = contextlib.ExitStack()
        try:
            temporary = stack.enter_context(runs.claim(folder))
        except OutputTaken:
            continue
        with stack:
            yield folder, temporary
        return
    raise ValueError(f"{str(base)!r} and {_DEFAULT_FOLDERS - 1} more names are taken; pass --out")


def _load(args: argparse.Namespace) -> LabelledData:
    from crossent.classifier.data import bundled, labelled, read_table

    if args.data is None:
        if args.target is not None:
            raise ValueError("`--target` names a column of DATA; give DATA or leave it out")
        return bundled(args.dataset)
    if args.target is None:
        raise ValueError("`--target` is required with DATA: name the label column")
    table = read_table(args.data, text_columns=[args.target])
    return labelled(table, args.target, source=repr(args.data))


def _default_folder(args: argparse.Namespace) -> Path:
    name = Path(args.data).stem if args.data else args.dataset
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{name}-{stamp}"


def _processes(text: str) -> int:
    try:
        processes = int(text)
    except ValueError:
        processes = 0
    if not 1 <= processes <= MAX_PROCESSES:
        raise argparse.ArgumentTypeError(
            f"must be a whole number from 1 to {MAX_PROCESSES}; got {text!r}"
        )
    return processes


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number of seconds > 0; got {text!r}")
    return seconds


def _widths(text: str) -> list[int]:
    try:
        widths = [int(part) for part in text.replace(",", " ").split()]
    except ValueError:
        widths = []
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"must be positive integers such as 64,32; got {text!r}")
    return widths


class _EpochBars:
    """One progress bar per epoch, with the running training loss in bits per example."""

    def __init__(self, console: Console, epochs: int) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.epochs = epochs
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[loss]}"),
            TimeElapsedColumn(),
            console=console,
        )
        self.task: Any = None
        self.total = 0.0
        self.steps = 0

    def __enter__(self) -> _EpochBars:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)

    def step(self, epoch: int, step: int, steps: int, loss_bits: float) -> None:
        if step == 0:
            self.task = self.progress.add_task(
                f"epoch {epoch + 1}/{self.epochs}", loss="", total=steps
            )
            self.total, self.steps = 0.0, 0
        self.total, self.steps = self.total + loss_bits, self.steps + 1
        self.progress.update(
            self.task, advance=1, loss=f"train {self.total / self.steps:.4f} bits/example"
        )

    def epoch_done(self, epoch: int, history: History) -> None:
        held_out = f", held out {history.held_out_bits[-1]:.4f}" if history.held_out_bits else ""
        self.progress.update(
            self.task, loss=f"train {history.train_bits[-1]:.4f}{held_out} bits/example"
        )
