"""How good are predicted distributions? Log loss in bits, its decomposition, calibration.

:class:`Scorecard` accumulates over batches of (log-probabilities, labels), so data larger than
memory is scored in constant memory, and :meth:`Scorecard.report` gives every figure at once.

The decomposition of the mean log loss (Bröcker 2009; Weijs et al. 2010; docs/prior-art.md §4),
in bits per example, is

    E[−log2 f_Y(X)] = H(Y) − resolution + reliability,

with the forecasts grouped into bins b of weight w_b and label frequencies π_b:

    uncertainty  H(Y)                        entropy of the label frequencies
    resolution   Σ_b w_b D(π_b ‖ π̄) ≥ 0      how much the bins tell the labels apart
    reliability  Σ_b w_b (CE_b − H(π_b))     CE_b the mean log loss in bin b

The three add up to the log loss exactly. Reliability equals Σ_b w_b D(π_b ‖ f_b), the
calibration loss, when the forecasts f_b are constant within each bin; otherwise it also holds
what the forecasts resolve within a bin, and finer bins move that into resolution. A bin here
is (top-label class, top-label probability in one of ``bins`` equal-width intervals of
[0, 1]); the same confidence intervals give the top-label expected calibration error (ECE).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from crossent.measures import entropy

LN2 = math.log(2)


@dataclass(frozen=True)
class ClassFigures:
    """One class: its examples, their mean log loss, and calibration-in-the-large."""

    label: str
    count: int
    frequency: float
    mean_predicted: float
    recall: float | None
    mean_nll_bits: float | None


@dataclass(frozen=True)
class ConfidenceBin:
    """One interval of top-label probability: examples, mean confidence, accuracy."""

    low: float
    high: float
    count: int
    confidence: float | None
    accuracy: float | None


@dataclass(frozen=True)
class Report:
    """Every figure of a scored set of predictions; NLL per example (mean) and total (sum).

    The mean NLL adds up as uncertainty − resolution + reliability (docs/theory.md §7), with
    the forecasts grouped by ``decomposition_bins``.

    Attributes:
        examples: N, the examples scored.
        classes: M, the classes.
        accuracy: the fraction whose top-probability class is the label.
        mean_nll_bits, mean_nll_nats: the NLL per example, −(1/N) Σ log q(y).
        total_nll_bits, total_nll_nats: the NLL of the whole set, −Σ log q(y).
        label_entropy_bits: H(Y) of the labels' frequencies, bits per example.
        perplexity: 2 ** (mean NLL in bits).
        uncertainty_bits: H(Y), the first term of the decomposition.
        resolution_bits: what the forecasts tell apart, I(Y; forecast), estimated by binning.
        reliability_bits: the calibration loss, E[D(π ‖ forecast)], estimated by binning.
        decomposition_bins: how the forecasts were binned for the decomposition, in words.
        ece: the top-label expected calibration error.
        confidence_bins: the reliability diagram's bins: count, confidence, accuracy.
        per_class: per class: count, frequency, mean predicted probability, recall and mean NLL.

    >>> card = Scorecard(["a", "b"])
    >>> card.update(np.log([[0.5, 0.5], [0.25, 0.75]]), np.array([0, 1]))
    >>> report = card.report()
    >>> round(report.total_nll_bits, 6), round(report.mean_nll_bits, 6)  # 1 + log2(4/3) bits
    (1.415037, 0.707519)
    """

    examples: int
    classes: int
    accuracy: float
    mean_nll_bits: float
    mean_nll_nats: float
    total_nll_bits: float
    total_nll_nats: float
    label_entropy_bits: float
    perplexity: float
    uncertainty_bits: float
    resolution_bits: float
    reliability_bits: float
    decomposition_bins: str
    ece: float
    confidence_bins: list[ConfidenceBin]
    per_class: list[ClassFigures]

    def to_dict(self) -> dict[str, Any]:
        """Every figure as plain numbers, lists and strings: the JSON of ``--json``."""
        return asdict(self)


class Scorecard:
    """Running sums for :class:`Report`; ``update`` with each batch, then ``report``.

    Memory does not grow with the examples added: a file of any size is scored in batches.

    Args:
        classes: the M class names.
        bins: equal-width confidence bins of the ECE and of the decomposition, ≥ 1.

    >>> card = Scorecard(["cat", "dog"], bins=5)
    >>> for batch in range(3):
    ...     card.update(np.log([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 1]))
    >>> report = card.report()
    >>> report.examples, report.accuracy, round(report.mean_nll_bits, 4)
    (6, 1.0, 0.237)
    """

    def __init__(self, classes: Sequence[str], bins: int = 10) -> None:
        if bins < 1:
            raise ValueError(f"`bins` must be a positive integer; got {bins!r}")
        self.classes = list(classes)
        self.bins = bins
        num_classes = len(self.classes)
        self._nats = 0.0
        self._correct = 0
        self._label_counts = np.zeros(num_classes, np.int64)
        self._class_nats = np.zeros(num_classes)
        self._class_correct = np.zeros(num_classes, np.int64)
        self._predicted_mass = np.zeros(num_classes)
        self._bin_counts = np.zeros(bins, np.int64)
        self._bin_confidence = np.zeros(bins)
        self._bin_correct = np.zeros(bins, np.int64)
        self._cell_keys = np.zeros(0, np.int64)  # (top class, confidence bin, label), sorted
        self._cell_counts = np.zeros(0, np.int64)

    def update(self, log_probs: np.ndarray, labels: np.ndarray) -> None:
        """Add a batch of examples.

        Args:
            log_probs: ``(n, M)`` the predicted log-probabilities, in nats.
            labels: ``(n,)`` the observed class indices.
        """
        log_probs = np.asarray(log_probs, dtype=np.float64)
        labels = np.asarray(labels, dtype=np.int64)
        num_classes = len(self.classes)
        nats = -np.take_along_axis(log_probs, labels[:, None], axis=1)[:, 0]
        top = log_probs.argmax(axis=1)
        confidence = np.exp(log_probs[np.arange(len(top)), top])
        correct = top == labels
        which_bin = np.minimum((confidence * self.bins).astype(np.int64), self.bins - 1)
        self._nats += float(nats.sum())
        self._correct += int(correct.sum())
        self._label_counts += np.bincount(labels, minlength=num_classes)
        self._class_nats += np.bincount(labels, weights=nats, minlength=num_classes)
        self._class_correct += np.bincount(labels[correct], minlength=num_classes)
        self._predicted_mass += np.exp(log_probs).sum(axis=0)
        self._bin_counts += np.bincount(which_bin, minlength=self.bins)
        self._bin_confidence += np.bincount(which_bin, weights=confidence, minlength=self.bins)
        self._bin_correct += np.bincount(which_bin[correct], minlength=self.bins)
        cells = (top * self.bins + which_bin) * num_classes + labels
        self._add_cells(*np.unique(cells, return_counts=True))

    def report(self) -> Report:
        """All figures so far; at least one example must have been added."""
        count = int(self._label_counts.sum())
        if count == 0:
            raise ValueError("nothing to score: no examples were given")
        mean_bits = self._nats / count / LN2
        uncertainty = _entropy_bits(self._label_counts)
        within = self._mean_cell_entropy_bits(count)
        return Report(
            examples=count,
            classes=len(self.classes),
            accuracy=self._correct / count,
            mean_nll_bits=mean_bits,
            mean_nll_nats=self._nats / count,
            total_nll_bits=self._nats / LN2,
            total_nll_nats=self._nats,
            label_entropy_bits=uncertainty,
            perplexity=2.0**mean_bits,
            uncertainty_bits=uncertainty,
            resolution_bits=uncertainty - within,
            reliability_bits=mean_bits - within,
            decomposition_bins=(
                f"top-label class × {self.bins} equal-width intervals of top-label probability"
            ),
            ece=self._ece(count),
            confidence_bins=self._confidence_bins(),
            per_class=self._per_class(count),
        )

    def _add_cells(self, keys: np.ndarray, counts: np.ndarray) -> None:
        merged = np.concatenate([self._cell_keys, keys])
        self._cell_keys, where = np.unique(merged, return_inverse=True)
        self._cell_counts = np.bincount(
            where,
            weights=np.concatenate([self._cell_counts, counts]),
            minlength=len(self._cell_keys),
        ).astype(np.int64)

    def _mean_cell_entropy_bits(self, count: int) -> float:
        """Σ_b w_b H(π_b): the label entropy left within the forecast bins."""
        _, bin_of_cell = np.unique(self._cell_keys // len(self.classes), return_inverse=True)
        bin_totals = np.bincount(bin_of_cell, weights=self._cell_counts)[bin_of_cell]
        return float(-(self._cell_counts * np.log2(self._cell_counts / bin_totals)).sum() / count)

    def _ece(self, count: int) -> float:
        gaps = np.abs(self._bin_correct - self._bin_confidence)
        return float(gaps.sum() / count)

    def _confidence_bins(self) -> list[ConfidenceBin]:
        edges = np.arange(self.bins + 1) / self.bins
        counts = self._bin_counts
        return [
            ConfidenceBin(
                low=float(edges[b]),
                high=float(edges[b + 1]),
                count=int(counts[b]),
                confidence=_ratio(self._bin_confidence[b], counts[b]),
                accuracy=_ratio(self._bin_correct[b], counts[b]),
            )
            for b in range(self.bins)
        ]

    def _per_class(self, count: int) -> list[ClassFigures]:
        counts = self._label_counts
        return [
            ClassFigures(
                label=label,
                count=int(counts[j]),
                frequency=float(counts[j] / count),
                mean_predicted=float(self._predicted_mass[j] / count),
                recall=_ratio(self._class_correct[j], counts[j]),
                mean_nll_bits=_ratio(self._class_nats[j] / LN2, counts[j]),
            )
            for j, label in enumerate(self.classes)
        ]


def _entropy_bits(counts: np.ndarray) -> float:
    """Entropy of the empirical distribution of ``counts``, in bits (0 log 0 = 0)."""
    return float(entropy(counts / counts.sum()))


def _ratio(total: float, count: int) -> float | None:
    """A mean over ``count`` items; None for an empty set, which has no mean."""
    return float(total / count) if count else None


def logistic_regression_reference(
    train: tuple[np.ndarray, np.ndarray],
    held_out: tuple[np.ndarray, np.ndarray],
    num_classes: int,
    weight_decay: float,
) -> dict[str, Any]:
    """Held-out mean log loss of scikit-learn's LogisticRegression fitted on the same split.

    Features must already be standardised. The same regularisation as SGD's weight decay λ on
    the mean loss, (λ/2)‖W‖², is C = 1 / (N λ) in scikit-learn's C Σ loss + ½‖W‖² for M > 2
    classes. For M = 2 scikit-learn fits one weight vector d, the difference of the softmax's
    two rows w₁ − w₀, and (λ/2)(‖w₀‖² + ‖w₁‖²) is least at w₁ = −w₀ = d/2, where it is
    (λ/4)‖d‖²: the same regularisation is then C = 2 / (N λ).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    count = len(train[1])
    rows_per_vector = 2.0 if num_classes == 2 else 1.0  # softmax rows behind each coef_ row
    strength = rows_per_vector / (count * weight_decay) if weight_decay > 0 else math.inf
    fitted = LogisticRegression(C=strength, max_iter=10_000).fit(*train)
    probs = np.zeros((len(held_out[1]), num_classes))
    probs[:, fitted.classes_] = fitted.predict_proba(held_out[0])
    nats = log_loss(held_out[1], probs, labels=np.arange(num_classes))
    return {
        "model": "sklearn.linear_model.LogisticRegression (lbfgs, multinomial)",
        "C": strength,
        "mean_nll_bits": float(nats / LN2),
        "mean_nll_nats": float(nats),
    }
