"""Benchmark training throughput: crossent's linear softmax classifier against scikit-learn.

What is measured
    Examples per second, and wall time, to reach the same held-out log loss, for two linear
    classifiers of 20 classes trained by stochastic gradient descent on one synthetic data set:

        crossent      crossent.classifier.train.train on a linear SoftmaxClassifier
                      (multinomial logistic regression), minibatch SGD with momentum on the
                      mean NLL, cosine learning-rate decay over the epoch budget
        scikit-learn  sklearn.linear_model.SGDClassifier(loss="log_loss"), its default
                      "optimal" learning rate, one partial_fit call per epoch. For 20 classes
                      it is one-vs-rest: 20 binary logistic regressions, each a pass over every
                      example per epoch, whose probabilities are normalised to sum to 1.

    Both get the same L2 penalty: scikit-learn's alpha and crossent's weight decay λ each add
    (λ/2)‖W‖² to the mean loss (neither decays the biases).

The data set
    1,000,000 rows × 100 features, 20 classes; the last 100,000 rows are held out. Features are
    standard normal columns, each then scaled by e^N(0,1) and shifted by N(0, 3²), so that
    standardising matters. Labels are drawn from a random linear-softmax teacher on the
    unscaled features (weights N(0, 3²/100), biases N(0, 0.5²)), so multinomial logistic
    regression is well specified; the teacher's own held-out NLL is the floor any model can
    reach (reported). Generated from a fixed seed, outside the timings.

Protocol
    1. scikit-learn trains for --epochs epochs (default 5) on the training rows standardised by
       their mean and standard deviation (crossent.classifier.model.standardisation, computed
       outside the timings). After each epoch its held-out log loss in bits is recorded with
       its cumulative training time. The target is the lowest held-out log loss it reaches.
    2. crossent trains for the same number of epochs on the raw training rows (its model
       standardises them with the same mean and scale in its forward pass, inside the timing,
       as does train()'s conversion of the features to float32). Its held-out log loss is
       checked at the end of each epoch (as scikit-learn's) and, to see where it crosses the
       target within an epoch, also --checks-per-epoch times per epoch (default 10) and after
       1, 2, 4, 8, … steps of the first epoch, from train()'s on_step callback.
    3. For each: the first check at or below the target gives the examples processed (epochs ×
       training rows, for scikit-learn also) and the training time to the target;
       examples/s = examples / time; speedup = scikit-learn's time / crossent's time.
       The final held-out log loss after the whole budget is reported too.

How time is counted
    time.perf_counter around scikit-learn's partial_fit calls, and around crossent's train()
    call less the time spent computing held-out losses in its callback: the held-out
    evaluation is excluded from both. Data generation and one warm-up per library (a tiny
    training run that pays one-time costs such as torch.optim's lazy import of torch._dynamo,
    about 2 s) are excluded too. Each library runs --repeat times (default 3), alternating;
    the losses are the same in every repeat (fixed seeds, checked), and each check's time is
    the median over the repeats. Both run on --threads threads (default 1: torch's intra-op
    threads, scikit-learn's n_jobs over the one-vs-rest problems), see the docs for why.
    other_load in the CSV is the CPU time other processes used during a run, in cores (from
    /proc/stat less this process's own CPU time): 0 on a quiet machine.

Usage:
    .venv/bin/python benchmarks/bench_train.py                 # full run, writes the CSV
    .venv/bin/python benchmarks/bench_train.py --quick         # 25,000 rows, seconds
    .venv/bin/python benchmarks/bench_train.py --threads 2 --csv /tmp/train.csv

Progress goes to stderr; the markdown tables of results go to stdout.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import sklearn
import torch
from sklearn.linear_model import SGDClassifier

import crossent
from _load import LoadMeter
from bench_measures import (
    add_csv_option,
    cpu_model,
    git_commit,
    l3_cache,
    log,
    results_path,
    source_digest,
    write_csv,
)
from crossent.classifier.model import ModelCard, SoftmaxClassifier, standardisation
from crossent.classifier.train import SGDOptions, mean_nll_bits, train

FEATURES = 100
CLASSES = 20
FULL_ROWS, FULL_HELD_OUT = 1_000_000, 100_000
QUICK_ROWS, QUICK_HELD_OUT = 25_000, 5_000
TEACHER_SCALE = 3.0  # teacher logits have standard deviation about 3 across classes
SEED = 20240601
DEFAULT_EPOCHS = 5
DEFAULT_REPEAT = 3  # the full run takes about 4.5 minutes
DEFAULT_CHECKS_PER_EPOCH = 10
BATCH_SIZE = 256
LEARNING_RATE = 0.05
MOMENTUM = 0.9
ALPHA = 1e-4  # scikit-learn's default alpha; crossent's weight decay is set equal to it
DEFAULT_CSV = Path(__file__).resolve().parents[1] / "docs" / "benchmarks" / "train.csv"
LN2 = math.log(2)

SKLEARN = "scikit-learn"
OURS = "crossent"


@dataclass
class Data:
    x_train: np.ndarray  # raw features, float64
    y_train: np.ndarray
    x_held: np.ndarray
    y_held: np.ndarray
    teacher_bits: float  # the teacher's held-out NLL: the floor


@dataclass
class Check:
    """One held-out evaluation: after ``epoch`` epochs (fractional within an epoch)."""

    epoch: float
    examples: int
    bits: float
    seconds: float  # cumulative training time, evaluation excluded


@dataclass
class Curve:
    library: str
    checks: list[Check] = field(default_factory=list)
    other_load: float = 0.0


def synthetic(rows: int, held_out: int, seed: int) -> Data:
    """Features and labels from a random linear-softmax teacher (see the module docstring)."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((rows, FEATURES))
    weights = rng.standard_normal((FEATURES, CLASSES)) * (TEACHER_SCALE / math.sqrt(FEATURES))
    biases = rng.standard_normal(CLASSES) * 0.5
    labels = np.empty(rows, np.int64)
    label_nats = np.empty(rows)
    for start in range(0, rows, 100_000):
        part = slice(start, start + 100_000)
        logits = latent[part] @ weights + biases
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        uniform = rng.random((len(probs), 1))
        drawn = np.minimum((probs.cumsum(axis=1) < uniform).sum(axis=1), CLASSES - 1)
        labels[part] = drawn
        label_nats[part] = -np.log(probs[np.arange(len(drawn)), drawn])
    scale = np.exp(rng.standard_normal(FEATURES))
    shift = rng.standard_normal(FEATURES) * 3.0
    latent *= scale
    latent += shift
    cut = rows - held_out
    return Data(
        x_train=latent[:cut],
        y_train=labels[:cut],
        x_held=latent[cut:],
        y_held=labels[cut:],
        teacher_bits=float(label_nats[cut:].mean() / LN2),
    )


def sklearn_bits(model: SGDClassifier, features: np.ndarray, labels: np.ndarray) -> float:
    """Mean held-out −log2 p(y | x) of scikit-learn's (normalised one-vs-rest) probabilities."""
    probs = model.predict_proba(features)
    chosen = probs[np.arange(len(labels)), labels]
    return float(-np.log(np.maximum(chosen, np.finfo(np.float64).tiny)).mean() / LN2)


def new_sklearn(seed: int, threads: int) -> SGDClassifier:
    return SGDClassifier(
        loss="log_loss",
        alpha=ALPHA,
        learning_rate="optimal",
        shuffle=True,
        random_state=seed,
        n_jobs=threads,
    )


def run_sklearn(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_held: np.ndarray,
    y_held: np.ndarray,
    epochs: int,
    threads: int,
) -> Curve:
    """partial_fit one epoch at a time on standardised features; held-out loss after each."""
    model = new_sklearn(SEED, threads)
    classes = np.arange(CLASSES)
    curve, seconds = Curve(SKLEARN), 0.0
    with LoadMeter() as load:
        for epoch in range(1, epochs + 1):
            start = time.perf_counter()
            model.partial_fit(x_train, y_train, classes=classes)
            seconds += time.perf_counter() - start
            bits = sklearn_bits(model, x_held, y_held)
            curve.checks.append(Check(epoch, epoch * len(y_train), bits, seconds))
            log(f"    {SKLEARN} epoch {epoch}: {bits:.4f} bits, {seconds:.1f} s")
    curve.other_load = load.cores
    return curve


def crossent_options(epochs: int) -> SGDOptions:
    return SGDOptions(
        learning_rate=LEARNING_RATE,
        momentum=MOMENTUM,
        weight_decay=ALPHA,
        epochs=epochs,
        batch_size=BATCH_SIZE,
        objective="nll",
        schedule="cosine",
        seed=SEED,
    )


def model_card(data: Data, options: SGDOptions) -> ModelCard:
    mean, scale = standardisation(data.x_train)
    return ModelCard(
        classes=[str(j) for j in range(CLASSES)],
        feature_names=[f"x{i}" for i in range(FEATURES)],
        target="label",
        hidden=[],
        mean=mean,
        scale=scale,
        options=asdict(options),
    )


def run_crossent(data: Data, options: SGDOptions, checks_per_epoch: int) -> Curve:
    """train() for the whole budget, its held-out loss checked (untimed) from on_step.

    Checks come after 1, 2, 4, 8, … steps of the first epoch, where the loss falls fastest, and
    ``checks_per_epoch`` times in every epoch, the last at its end.
    """
    model = SoftmaxClassifier(model_card(data, options), seed=options.seed)
    rows = len(data.y_train)
    steps = math.ceil(rows / options.batch_size)
    check_at = {max(1, round(k * steps / checks_per_epoch)) - 1 for k in range(1, checks_per_epoch)}
    check_at.add(steps - 1)  # always at the end of an epoch
    early = {2**k - 1 for k in range(steps.bit_length())}  # after 1, 2, 4, … steps of epoch 1
    curve = Curve(OURS)
    paused = 0.0
    start = time.perf_counter()

    def on_step(epoch: int, step: int, steps_per_epoch: int, loss_bits: float) -> None:
        nonlocal paused
        if step not in check_at and not (epoch == 0 and step in early):
            return
        now = time.perf_counter()
        bits = mean_nll_bits(model, data.x_held, data.y_held)
        done = min((step + 1) * options.batch_size, rows)
        check = Check(epoch + done / rows, epoch * rows + done, bits, now - start - paused)
        curve.checks.append(check)
        if step == steps - 1:
            log(f"    {OURS} epoch {epoch + 1}: {bits:.4f} bits, {check.seconds:.1f} s")
        paused += time.perf_counter() - now

    with LoadMeter() as load:
        train(model, data.x_train, data.y_train, options, on_step=on_step)
    curve.other_load = load.cores
    return curve


def warm_up(data: Data, x_train_std: np.ndarray, threads: int) -> None:
    """A tiny run of each, so that one-time costs (lazy imports) fall outside the timings."""
    rows = min(len(data.y_train), 4 * BATCH_SIZE)
    tiny = Data(data.x_train[:rows], data.y_train[:rows], data.x_held, data.y_held, 0.0)
    options = crossent_options(epochs=1)
    train(SoftmaxClassifier(model_card(tiny, options)), tiny.x_train, tiny.y_train, options)
    model = new_sklearn(SEED, threads)
    model.partial_fit(x_train_std[:rows], data.y_train[:rows], classes=np.arange(CLASSES))


def median_curve(curves: list[Curve]) -> list[dict]:
    """Per check: the loss (the same in every repeat) and the median, min and max time."""
    rows = []
    for checks in zip(*(c.checks for c in curves), strict=True):
        bits = [c.bits for c in checks]
        if max(bits) - min(bits) > 1e-9:
            log(f"  warning: held-out losses differ between repeats at epoch {checks[0].epoch}")
        seconds = [c.seconds for c in checks]
        rows.append(
            {
                "epoch": round(checks[0].epoch, 4),
                "examples": checks[0].examples,
                "held_out_bits": statistics.median(bits),
                "seconds": statistics.median(seconds),
                "seconds_min": min(seconds),
                "seconds_max": max(seconds),
            }
        )
    return rows


def first_at_or_below(points: list[dict], target: float) -> dict | None:
    return next((p for p in points if p["held_out_bits"] <= target), None)


def summarise(
    sklearn_curves: list[Curve], crossent_curves: list[Curve], settings: dict
) -> tuple[list[dict], list[dict]]:
    """Summary rows (one per library and check interval) and checkpoint rows, for the CSV."""
    ours_all = median_curve(crossent_curves)
    curves = {
        (SKLEARN, "epoch"): median_curve(sklearn_curves),
        (OURS, "epoch"): [p for p in ours_all if float(p["epoch"]).is_integer()],
        (OURS, f"2^k steps, 1/{settings['checks_per_epoch']} epoch"): ours_all,
    }
    loads = {
        SKLEARN: statistics.median(c.other_load for c in sklearn_curves),
        OURS: statistics.median(c.other_load for c in crossent_curves),
    }
    target = min(p["held_out_bits"] for p in curves[SKLEARN, "epoch"])
    reached = {key: first_at_or_below(points, target) for key, points in curves.items()}
    sklearn_seconds = reached[SKLEARN, "epoch"]["seconds"]  # type: ignore[index]
    summary = []
    for (library, every), points in curves.items():
        hit, last = reached[library, every], points[-1]
        summary.append(
            {
                "record": "summary",
                "library": library,
                "checked_every": every,
                "target_bits": round(target, 5),
                "epoch": hit["epoch"] if hit else "",
                "examples": hit["examples"] if hit else "",
                "held_out_bits": round(hit["held_out_bits"], 5) if hit else "",
                "seconds": round(hit["seconds"], 3) if hit else "",
                "seconds_min": round(hit["seconds_min"], 3) if hit else "",
                "seconds_max": round(hit["seconds_max"], 3) if hit else "",
                "examples_per_s": round(hit["examples"] / hit["seconds"]) if hit else "",
                "speedup_vs_sklearn": round(sklearn_seconds / hit["seconds"], 2) if hit else "",
                "final_epoch": last["epoch"],
                "final_bits": round(last["held_out_bits"], 5),
                "final_seconds": round(last["seconds"], 3),
                "final_examples_per_s": round(last["examples"] / last["seconds"]),
                "other_load": round(loads[library], 2),
            }
        )
    checkpoints = [
        {
            "record": "checkpoint",
            "library": library,
            "checked_every": every,
            "target_bits": round(target, 5),
            **{k: round(v, 5) if isinstance(v, float) else v for k, v in p.items()},
            "examples_per_s": round(p["examples"] / p["seconds"]),
            "other_load": round(loads[library], 2),
        }
        for (library, every), points in curves.items()
        if (library, every) != (OURS, "epoch")  # a subset of the finer checks
        for p in points
    ]
    return summary, checkpoints


def about(threads: int) -> dict[str, str]:
    """The machine and the library versions, repeated on every CSV row."""
    return {
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "threads": str(threads),
        "l3_cache": l3_cache(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit_learn": sklearn.__version__,
        "crossent": crossent.__version__,
        "git_commit": git_commit(),
        "source_sha256": source_digest(),
        "date": datetime.date.today().isoformat(),
    }


def markdown(summary: list[dict], checkpoints: list[dict], settings: dict) -> str:
    lines = [
        f"Target: {summary[0]['target_bits']:.4f} bits, the best held-out log loss of "
        f"scikit-learn in {settings['epochs']} epochs (teacher floor "
        f"{settings['teacher_bits']:.4f} bits).",
        "",
        "| library | checked every | examples to target | seconds to target | examples/s "
        "| speedup | final bits | budget seconds | budget examples/s |",
        "|" + "---|" * 9,
    ]
    for s in summary:
        reached = s["examples"] != ""
        cells = [
            s["library"],
            s["checked_every"],
            f"{s['examples']:,} ({s['epoch']:g} ep)" if reached else "not reached",
            f"{s['seconds']:.2f}" if reached else "",
            f"{s['examples_per_s']:,}" if reached else "",
            f"{s['speedup_vs_sklearn']:.1f}×" if reached else "",
            f"{s['final_bits']:.4f}",
            f"{s['final_seconds']:.1f}",
            f"{s['final_examples_per_s']:,}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    by_epoch = {
        (p["library"], p["epoch"]): p for p in checkpoints if float(p["epoch"]).is_integer()
    }
    lines += [
        "",
        "| epoch | scikit-learn bits | seconds (min–max) | crossent bits | seconds (min–max) |",
        "|---|---|---|---|---|",
    ]
    for epoch in range(1, settings["epochs"] + 1):
        cells = [str(epoch)]
        for library in (SKLEARN, OURS):
            p = by_epoch[library, epoch]
            cells += [
                f"{p['held_out_bits']:.4f}",
                f"{p['seconds']:.2f} ({p['seconds_min']:.2f}–{p['seconds_max']:.2f})",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_ROWS:,} rows, 2 epochs, 1 repeat"
    )
    parser.add_argument("--epochs", type=int, default=None, help="the budget (default 5)")
    parser.add_argument("--repeat", type=int, default=None, help="runs of each (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="threads of each (default 1)")
    parser.add_argument(
        "--checks-per-epoch",
        type=int,
        default=DEFAULT_CHECKS_PER_EPOCH,
        help="crossent's held-out checks per epoch (default 10)",
    )
    add_csv_option(parser, DEFAULT_CSV)
    args = parser.parse_args(argv)
    args.epochs = args.epochs or (2 if args.quick else DEFAULT_EPOCHS)
    args.repeat = args.repeat or (1 if args.quick else DEFAULT_REPEAT)
    for name in ("epochs", "repeat", "threads", "checks_per_epoch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    args.csv = results_path(args, DEFAULT_CSV)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    info = about(args.threads)
    log("machine: " + ", ".join(f"{k} {v}" for k, v in info.items()))
    rows, held_out = (QUICK_ROWS, QUICK_HELD_OUT) if args.quick else (FULL_ROWS, FULL_HELD_OUT)
    log(f"generating {rows:,} × {FEATURES} rows, {CLASSES} classes ({held_out:,} held out)")
    data = synthetic(rows, held_out, SEED)
    mean, scale = (np.asarray(v) for v in standardisation(data.x_train))
    x_train_std = (data.x_train - mean) / scale
    x_held_std = (data.x_held - mean) / scale
    log(f"  teacher's held-out NLL: {data.teacher_bits:.4f} bits")
    options = crossent_options(args.epochs)
    settings = {
        "rows_train": len(data.y_train),
        "rows_held_out": len(data.y_held),
        "features": FEATURES,
        "classes": CLASSES,
        "teacher_bits": round(data.teacher_bits, 5),
        "epochs": args.epochs,
        "checks_per_epoch": args.checks_per_epoch,
        "repeat": args.repeat,
        "crossent_batch_size": options.batch_size,
        "crossent_learning_rate": options.learning_rate,
        "crossent_momentum": options.momentum,
        "crossent_weight_decay": options.weight_decay,
        "crossent_schedule": options.schedule,
        "sklearn_alpha": ALPHA,
        "sklearn_learning_rate": "optimal",
    }
    log("warming up")
    warm_up(data, x_train_std, args.threads)
    started = time.perf_counter()
    sklearn_curves, crossent_curves = [], []
    for repeat in range(1, args.repeat + 1):
        log(f"repeat {repeat}/{args.repeat}")
        held = (x_held_std, data.y_held)
        sklearn_curves.append(
            run_sklearn(x_train_std, data.y_train, *held, args.epochs, args.threads)
        )
        crossent_curves.append(run_crossent(data, options, args.checks_per_epoch))
        log(
            f"  other processes used {sklearn_curves[-1].other_load:.2f} / "
            f"{crossent_curves[-1].other_load:.2f} cores (scikit-learn / crossent runs)"
        )
    log(f"done in {time.perf_counter() - started:.0f} s")
    summary, checkpoints = summarise(sklearn_curves, crossent_curves, settings)
    if args.csv is not None:
        write_csv(args.csv, [{**row, **settings} for row in summary + checkpoints], info)
    print(markdown(summary, checkpoints, settings))


if __name__ == "__main__":
    main()
