"""The report that ``train`` and ``score`` print: log loss in bits, its parts, calibration."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from crossent.classifier.evaluate import Report

_MOST_CLASSES = 20


def print_report(console: Console, report: Report, title: str) -> None:
    """Headline figures, the decomposition that adds up to the log loss, per-class figures."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column(style="dim")
    for row in _headline(report):
        table.add_row(*row)
    console.print(table)
    console.print(_per_class(report))


def _headline(report: Report) -> list[tuple[str, str, str]]:
    r = report
    return [
        ("examples, classes", f"{r.examples:,}, {r.classes:,}", ""),
        ("accuracy", f"{r.accuracy:.4f}", "top-label prediction is the label"),
        ("mean NLL", f"{r.mean_nll_bits:.4f} bits", "per example; = cross entropy H(y, ŷ)"),
        ("", f"{r.mean_nll_nats:.4f} nats", "per example"),
        ("total NLL", f"{r.total_nll_bits:,.1f} bits", "of the whole set: the sum"),
        ("", f"{r.total_nll_nats:,.1f} nats", "of the whole set: the sum"),
        ("H(Y)", f"{r.label_entropy_bits:.4f} bits", "labels' entropy: the loss of no features"),
        ("perplexity", f"{r.perplexity:.4f}", "2 ** mean NLL in bits"),
        ("uncertainty", f"{r.uncertainty_bits:.4f} bits", "H(Y)"),
        ("− resolution", f"{r.resolution_bits:.4f} bits", "what the forecasts tell apart"),
        ("+ reliability", f"{r.reliability_bits:.4f} bits", "calibration loss"),
        ("= mean NLL", f"{_decomposed(r):.4f} bits", f"bins: {r.decomposition_bins}"),
        ("top-label ECE", f"{r.ece:.4f}", f"{len(r.confidence_bins)} equal-width bins"),
    ]


def _decomposed(report: Report) -> float:
    return report.uncertainty_bits - report.resolution_bits + report.reliability_bits


def _per_class(report: Report) -> Table:
    shown = report.per_class[:_MOST_CLASSES]
    more = len(report.per_class) - len(shown)
    table = Table(
        title="per class" + (f" (first {len(shown)} of {len(report.per_class)})" if more else ""),
        title_justify="left",
    )
    # a long label (18446744073709551615) folds onto a second line, never cut to "1844…"
    table.add_column("class", justify="right", overflow="fold")
    for header in ("examples", "frequency", "mean p(class)", "recall", "mean NLL, bits"):
        table.add_column(header, justify="right")
    for c in shown:
        table.add_row(
            c.label,
            f"{c.count:,}",
            f"{c.frequency:.4f}",
            f"{c.mean_predicted:.4f}",
            _maybe(c.recall),
            _maybe(c.mean_nll_bits),
        )
    return table


def _maybe(value: Any) -> str:
    return "–" if value is None else f"{value:.4f}"
