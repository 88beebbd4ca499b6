"""The Scorecard against scikit-learn, SciPy and float64 math, and its decomposition."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import accuracy_score, log_loss

from crossent.classifier.evaluate import Scorecard, logistic_regression_reference


def log(probs: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(probs)


def predictions(rows: int, classes: int, seed: int, sharpness: float = 2.0):
    rng = np.random.default_rng(seed)
    logits = sharpness * rng.standard_normal((rows, classes))
    log_probs = scipy.special.log_softmax(logits, axis=1)
    labels = np.array([rng.choice(classes, p=p) for p in np.exp(log_probs)])
    return log_probs, labels


def scored(log_probs, labels, classes: int, bins: int = 10, batch: int | None = None):
    card = Scorecard([f"c{j}" for j in range(classes)], bins)
    step = batch or len(labels)
    for start in range(0, len(labels), step):
        card.update(log_probs[start : start + step], labels[start : start + step])
    return card.report()


def test_headline_figures_match_scikit_learn_and_scipy() -> None:
    log_probs, labels = predictions(500, 4, seed=0)
    report = scored(log_probs, labels, 4)
    nats = log_loss(labels, np.exp(log_probs), labels=range(4))
    assert report.mean_nll_nats == pytest.approx(nats, rel=1e-12)
    assert report.mean_nll_bits == pytest.approx(nats / math.log(2), rel=1e-12)
    assert report.total_nll_bits == pytest.approx(500 * nats / math.log(2), rel=1e-12)
    assert report.accuracy == accuracy_score(labels, log_probs.argmax(1))
    frequencies = np.bincount(labels, minlength=4) / 500
    assert report.label_entropy_bits == pytest.approx(scipy.stats.entropy(frequencies, base=2))
    assert report.perplexity == pytest.approx(math.exp(nats))


@settings(max_examples=40, deadline=None)
@given(
    rows=st.integers(1, 300),
    classes=st.integers(2, 12),
    bins=st.integers(1, 15),
    batch=st.integers(1, 80),
    seed=st.integers(0, 2**16),
)
def test_decomposition_adds_up_and_batches_do_not_matter(
    rows: int, classes: int, bins: int, batch: int, seed: int
) -> None:
    log_probs, labels = predictions(rows, classes, seed)
    whole = scored(log_probs, labels, classes, bins)
    parts = scored(log_probs, labels, classes, bins, batch)
    total = whole.uncertainty_bits - whole.resolution_bits + whole.reliability_bits
    assert total == pytest.approx(whole.mean_nll_bits, rel=1e-9, abs=1e-12)
    assert whole.resolution_bits >= -1e-12  # Σ w_b D(π_b ‖ π̄) ≥ 0
    assert whole.resolution_bits <= whole.uncertainty_bits + 1e-12
    # every figure of the report, per class and per bin too, whatever the batches
    got, expected = flat(parts.to_dict()), flat(whole.to_dict())
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
        else:
            assert got[key] == value, key


def flat(found: object, path: str = "") -> dict[str, object]:
    """A report's nested dicts and lists as one dict of leaves, keyed by their path."""
    if isinstance(found, dict):
        return {
            k: v for key, value in found.items() for k, v in flat(value, f"{path}.{key}").items()
        }
    if isinstance(found, list):
        return {
            k: v for i, value in enumerate(found) for k, v in flat(value, f"{path}[{i}]").items()
        }
    return {path: found}


def test_decomposition_against_an_explicit_binned_computation() -> None:
    log_probs, labels = predictions(2000, 3, seed=1)
    bins = 5
    report = scored(log_probs, labels, 3, bins)
    top = log_probs.argmax(1)
    confidence = np.exp(log_probs.max(1))
    cell = top * bins + np.minimum((confidence * bins).astype(int), bins - 1)
    within = 0.0
    for b in np.unique(cell):
        members = labels[cell == b]
        within += len(members) / 2000 * scipy.stats.entropy(np.bincount(members), base=2)
    pooled = scipy.stats.entropy(np.bincount(labels), base=2)
    assert report.resolution_bits == pytest.approx(pooled - within, rel=1e-10)


def test_reliability_is_the_calibration_loss_when_forecasts_are_constant_per_bin() -> None:
    # two forecasts only, each alone in its bin: reliability = Σ w_b D(π_b ‖ f_b)
    f = np.log(np.array([[0.9, 0.1], [0.2, 0.8]]))
    which = np.array([0] * 60 + [1] * 40)
    labels = np.array([0] * 45 + [1] * 15 + [1] * 30 + [0] * 10)
    report = scored(f[which], labels, 2, bins=10)
    pi = [np.array([45, 15]) / 60, np.array([10, 30]) / 40]
    expected = 0.6 * scipy.stats.entropy(pi[0], np.exp(f[0]), base=2) + 0.4 * scipy.stats.entropy(
        pi[1], np.exp(f[1]), base=2
    )
    assert report.reliability_bits == pytest.approx(expected, rel=1e-12)


def test_ece_and_reliability_bins_by_hand() -> None:
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right): bins [0.9, 1] and [0.6, 0.7)
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6]])
    report = scored(log(probs), np.array([0, 1, 1]), 2, bins=10)
    assert report.ece == pytest.approx((2 * abs(0.5 - 0.9) + abs(1 - 0.6)) / 3)
    used = [b for b in report.confidence_bins if b.count]
    assert [(b.low, b.count, b.accuracy) for b in used] == [(0.6, 1, 1.0), (0.9, 2, 0.5)]
    empty = report.confidence_bins[0]
    assert empty.count == 0
    assert empty.accuracy is None  # the mean of nothing is not 0


def test_per_class_figures() -> None:
    probs = np.array([[0.5, 0.5, 0.0], [0.25, 0.75, 0.0], [1.0, 0.0, 0.0]])
    report = scored(log(probs), np.array([0, 1, 0]), 3)
    first, second, third = report.per_class
    assert (first.count, first.recall, first.mean_nll_bits) == (2, 1.0, 0.5)  # (1 + 0) / 2
    assert second.mean_nll_bits == pytest.approx(-math.log2(0.75))
    assert first.mean_predicted == pytest.approx(1.75 / 3)
    assert (third.count, third.recall, third.mean_nll_bits) == (0, None, None)


def test_a_label_the_model_rules_out_costs_infinite_bits_not_nan() -> None:
    probs = np.array([[1.0, 0.0], [0.5, 0.5]])
    report = scored(log(probs), np.array([1, 0]), 2)
    assert report.mean_nll_bits == math.inf
    assert report.reliability_bits == math.inf
    assert math.isfinite(report.resolution_bits)


def test_nothing_to_score_and_bad_bins() -> None:
    with pytest.raises(ValueError, match="no examples"):
        Scorecard(["a", "b"]).report()
    with pytest.raises(ValueError, match="`bins` must be a positive integer; got 0"):
        Scorecard(["a", "b"], bins=0)


@pytest.mark.parametrize("classes", [2, 3])
def test_the_reference_minimises_sgds_objective_for_two_classes_and_more(classes: int) -> None:
    """LogisticRegression with the reference's C is the optimum of SGD's objective, mean NLL
    + (λ/2)‖W‖²: the gradient there is 0. With two classes scikit-learn fits one vector d,
    which stands for the softmax's rows −d/2 and d/2 (C = 1/(Nλ) would penalise twice)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 4))
    labels = np.argmax(features[:, :classes] + rng.normal(size=(300, classes)), axis=1)
    weight_decay = 0.05
    reference = logistic_regression_reference(
        (features, labels), (features, labels), classes, weight_decay
    )
    fitted = LogisticRegression(C=reference["C"], tol=1e-12, max_iter=10_000)
    fitted.fit(features, labels)
    rows, bias = fitted.coef_, fitted.intercept_
    if classes == 2:
        rows, bias = np.stack([-rows[0] / 2, rows[0] / 2]), np.array([-bias[0] / 2, bias[0] / 2])
    weight = torch.tensor(rows, requires_grad=True)
    offset = torch.tensor(bias, requires_grad=True)
    logits = torch.from_numpy(features) @ weight.T + offset
    objective = torch.nn.functional.cross_entropy(logits, torch.from_numpy(labels))
    (objective + weight_decay / 2 * (weight**2).sum()).backward()
    assert weight.grad is not None
    assert offset.grad is not None
    assert float(weight.grad.abs().max()) < 1e-6
    assert float(offset.grad.abs().max()) < 1e-6


@pytest.mark.parametrize(("classes", "per_row"), [(3, 1.0), (2, 2.0)])
def test_the_logistic_regression_reference_by_hand(classes: int, per_row: float) -> None:
    """C = 1 / (N λ) for M > 2 and 2 / (N λ) for M = 2 (one weight vector for two softmax
    rows); the held-out log loss over all M classes, also one the held-out rows lack."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(4)
    x = rng.standard_normal((80, 3))
    y = rng.integers(0, classes, 80)
    held_x, held_y = x[60:], np.where(y[60:] == classes - 1, 0, y[60:])  # no row of the last
    found = logistic_regression_reference((x[:60], y[:60]), (held_x, held_y), classes, 0.01)
    strength = per_row / (60 * 0.01)
    fitted = LogisticRegression(C=strength, max_iter=10_000).fit(x[:60], y[:60])
    nats = log_loss(held_y, fitted.predict_proba(held_x), labels=range(classes))
    assert found["model"] == "sklearn.linear_model.LogisticRegression (lbfgs, multinomial)"
    assert found["C"] == pytest.approx(strength, rel=1e-15)
    assert found["mean_nll_nats"] == pytest.approx(nats, rel=1e-9)
    assert found["mean_nll_bits"] == pytest.approx(nats / math.log(2), rel=1e-9)


def test_no_weight_decay_is_an_unregularised_reference() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((40, 2)), rng.integers(0, 3, 40)
    assert logistic_regression_reference((x, y), (x, y), 3, 0.0)["C"] == math.inf


def test_float32_predictions_are_scored_in_float64() -> None:
    log_probs, labels = predictions(300, 5, seed=6)
    narrow = log_probs.astype(np.float32)
    exact = scored(narrow.astype(np.float64), labels, 5)
    assert scored(narrow, labels, 5).total_nll_nats == pytest.approx(
        exact.total_nll_nats, rel=1e-13
    )


def test_bins_and_classes_of_a_small_report_by_hand() -> None:
    card = Scorecard(["a", "b"], bins=2)
    q = np.array([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.2, 0.8]])
    card.update(np.log(q), np.array([0, 1, 1, 1]))
    found = card.report().to_dict()
    # top-label confidences 0.9, 0.6, 0.7, 0.8 all fall in [0.5, 1]; the top label is right
    # for 3 of the 4
    assert found["confidence_bins"] == [
        {"low": 0.0, "high": 0.5, "count": 0, "confidence": None, "accuracy": None},
        {"low": 0.5, "high": 1.0, "count": 4, "confidence": pytest.approx(0.75), "accuracy": 0.75},
    ]
    a, b = found["per_class"]
    assert (a["count"], a["frequency"], a["recall"]) == (1, 0.25, 1.0)
    assert (b["count"], b["frequency"], b["recall"]) == (3, 0.75, pytest.approx(2 / 3))
    assert a["mean_nll_bits"] == pytest.approx(-math.log2(0.9))
    assert b["mean_nll_bits"] == pytest.approx(-(math.log2(0.4 * 0.7 * 0.8)) / 3)
    counts = [
        a["count"],
        b["count"],
        found["examples"],
        *(c["count"] for c in found["confidence_bins"]),
    ]
    assert all(type(count) is int for count in counts)  # counts, not floats, in the JSON
    assert found["decomposition_bins"] == (
        "top-label class × 2 equal-width intervals of top-label probability"
    )


def test_ten_bins_by_default_and_an_empty_card_says_so() -> None:
    card = Scorecard(["a", "b"])
    card.update(np.log([[0.5, 0.5]]), np.array([0]))
    assert len(card.report().confidence_bins) == 10
    with pytest.raises(ValueError, match=r"^nothing to score: no examples were given$"):
        Scorecard(["a", "b"]).report()
