"""PNG figures of a run: loss curves, a reliability diagram, per-class cross entropy."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no screen

from matplotlib import pyplot as plt

from crossent.classifier.evaluate import Report
from crossent.classifier.train import History

_MOST_BARS = 40


def loss_curves(history: History, path: Path) -> None:
    """Training (running mean over each epoch) and held-out mean NLL, bits per example."""

    def draw(axes: Any) -> None:
        epochs = range(1, len(history.train_bits) + 1)
        axes.plot(epochs, history.train_bits, label="training (running mean over the epoch)")
        if history.held_out_bits:
            axes.plot(epochs, history.held_out_bits, label="held out (after the epoch)")
        axes.set(xlabel="epoch", ylabel="mean NLL, bits per example", title="Loss")
        axes.legend()

    _figure(path, draw)


def reliability_diagram(report: Report, path: Path) -> None:
    """Accuracy against mean top-label probability in each confidence bin."""

    def draw(axes: Any) -> None:
        used = [b for b in report.confidence_bins if b.count]
        axes.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect calibration")
        centres = [(b.low + b.high) / 2 for b in used]
        widths = [b.high - b.low for b in used]
        axes.bar(
            centres,
            [b.accuracy for b in used],
            width=widths,
            edgecolor="black",
            alpha=0.6,
            label="accuracy in the bin",
        )
        for centre, b in zip(centres, used, strict=True):
            axes.annotate(f"{b.count:,}", (centre, 0.01), ha="center", fontsize=7)
        axes.plot(
            [b.confidence for b in used],
            [b.accuracy for b in used],
            "o",
            color="C1",
            label="(mean confidence, accuracy)",
        )
        axes.set(
            xlim=(0, 1),
            ylim=(0, 1.02),
            xlabel="top-label probability (in the bars: examples)",
            ylabel="accuracy",
            title=f"Reliability (top-label ECE {report.ece:.3f})",
        )
        axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)

    _figure(path, draw, width=8.8)


def per_class_cross_entropy(report: Report, path: Path) -> None:
    """Mean −log2 p(y | x) over the examples of each class, with H(Y) for comparison."""

    present = [c for c in report.per_class if c.count]
    shown = sorted(present, key=lambda c: -(c.mean_nll_bits or 0.0))[:_MOST_BARS]
    worst = f", the {len(shown)} worst of {len(present)}" if len(shown) < len(present) else ""

    def draw(axes: Any) -> None:
        axes.barh([c.label for c in shown], [c.mean_nll_bits for c in shown], color="C0")
        axes.axvline(report.mean_nll_bits, color="C1", label="mean over all examples")
        axes.axvline(
            report.label_entropy_bits,
            color="grey",
            linestyle=":",
            label="H(Y): labels coded without the features",
        )
        axes.set(
            xlabel="mean NLL of the class's examples, bits", title=f"Per-class cross entropy{worst}"
        )
        axes.invert_yaxis()
        axes.legend()

    _figure(path, draw, height=max(3.0, 0.25 * len(shown) + 1.5))


def _figure(
    path: Path, draw: Callable[[Any], None], height: float = 4.0, width: float = 6.4
) -> None:
    figure, axes = plt.subplots(figsize=(width, height), layout="constrained")
    try:
        draw(axes)
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)
