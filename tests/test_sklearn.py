"""crossent.sklearn: scikit-learn's conventions, its model selection, scorers in bits, and the
same numbers as `crossent train` and as LogisticRegression with the same regularisation."""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import get_scorer, log_loss
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator, parametrize_with_checks

from crossent.classifier import SGDOptions, bundled, fit, split
from crossent.sklearn import SoftmaxClassifier, neg_nll_bits, nll_bits

LN2 = math.log(2)
IRIS = load_iris()
X, NAMES = IRIS.data, IRIS.target_names[IRIS.target]  # text labels


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Small models train faster on one thread than on two (no pool to synchronise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# Every check of check_estimator, legacy ones included, with no expected failure. 10 epochs
# keep the 55 checks to about 15 s; check_classifiers_train's accuracy bar (0.83) is met.
@parametrize_with_checks([SoftmaxClassifier(epochs=10)])
def test_scikit_learn_conventions(estimator: SoftmaxClassifier, check: object) -> None:
    check(estimator)  # type: ignore[operator]


@pytest.mark.slow
def test_scikit_learn_conventions_with_crossent_trains_defaults() -> None:
    results = check_estimator(SoftmaxClassifier(), on_skip=None)
    assert {result["status"] for result in results} <= {"passed", "skipped"}


def objective_nats(log_probs: np.ndarray, labels: np.ndarray, penalty: float) -> float:
    """The regularised training objective: mean NLL in nats + the weight penalty."""
    return float(-log_probs[np.arange(len(labels)), labels].mean() + penalty)


# (data set, how far SGD's training objective may stay above the optimum, as measured at 100
# epochs: iris 10.1%, wine 6.1% (few steps per epoch), breast_cancer 1.0%, digits 0.25%;
# the most the held-out NLL may differ from LogisticRegression's, bits: measured 0.053 (iris,
# 38 held-out rows), 0.0011, 0.011, 0.0012)
BUNDLED_SETS = [
    ("iris", 0.12, 0.07),
    ("wine", 0.08, 0.01),
    pytest.param("breast_cancer", 0.02, 0.02, marks=pytest.mark.slow),
    pytest.param("digits", 0.005, 0.005, marks=pytest.mark.slow),
]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize(("name", "objective_gap", "held_out_gap"), BUNDLED_SETS)
def test_the_estimator_is_crossent_train_and_nears_logistic_regression(
    name: str, objective_gap: float, held_out_gap: float
) -> None:
    data, options = bundled(name), SGDOptions()
    run = fit(data, options, hidden=[])  # what `crossent train --dataset NAME` computes
    train_part, held_out = split(data, 0.25, options.seed)  # the split fit made
    labels = np.asarray(data.classes)  # text, as a user's table would have them
    estimator = SoftmaxClassifier().fit(train_part.features, labels[train_part.labels])
    bits = -estimator.score(held_out.features, labels[held_out.labels])
    assert bits == pytest.approx(run.report.mean_nll_bits, abs=1e-6)

    # scikit-learn penalises one weight vector per class, or one in all for two classes,
    # which stands for the two rows w₁ = −w₀ = d/2 of the softmax: (λ/2)·2‖d/2‖² = (λ/4)‖d‖²
    count, weight_decay = len(train_part.labels), options.weight_decay
    rows_per_vector = 2 if len(data.classes) == 2 else 1
    strength = rows_per_vector / (count * weight_decay)
    assert run.reference is not None
    assert run.reference["C"] == pytest.approx(strength)
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=strength, max_iter=10_000))
    reference.fit(train_part.features, labels[train_part.labels])
    reference_bits = -neg_nll_bits(reference, held_out.features, labels[held_out.labels])
    assert reference_bits == pytest.approx(run.reference["mean_nll_bits"], rel=1e-9)
    assert abs(bits - reference_bits) <= held_out_gap

    # both minimise mean NLL + (λ/2) Σ_k ‖w_k‖² on the training part; LR finds the optimum
    weights = estimator.model_.network[0].weight.detach().double().numpy()
    ours = objective_nats(
        estimator.predict_log_proba(train_part.features),
        train_part.labels,
        weight_decay / 2 * float((weights**2).sum()),
    )
    vectors = reference[-1].coef_
    with np.errstate(divide="ignore"):
        optimum = objective_nats(
            reference.predict_log_proba(train_part.features),
            train_part.labels,
            weight_decay / (2 * rows_per_vector) * float((vectors**2).sum()),
        )
    assert optimum <= ours + 1e-6
    assert ours <= optimum * (1 + objective_gap)


def test_text_labels_give_the_numbers_of_their_indices() -> None:
    by_name = SoftmaxClassifier(epochs=5).fit(X, NAMES)
    by_index = SoftmaxClassifier(epochs=5).fit(X, IRIS.target)
    np.testing.assert_array_equal(by_name.classes_, ["setosa", "versicolor", "virginica"])
    np.testing.assert_array_equal(by_index.classes_, [0, 1, 2])
    np.testing.assert_array_equal(by_name.predict_proba(X), by_index.predict_proba(X))
    np.testing.assert_array_equal(by_name.predict(X), IRIS.target_names[by_index.predict(X)])


def test_probabilities_log_probabilities_and_score_agree() -> None:
    model = SoftmaxClassifier(epochs=5).fit(X, NAMES)
    log_probs, probs = model.predict_log_proba(X), model.predict_proba(X)
    np.testing.assert_allclose(np.exp(log_probs), probs, rtol=1e-15)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-14)
    np.testing.assert_array_equal(model.predict(X), model.classes_[probs.argmax(axis=1)])
    rows = np.searchsorted(model.classes_, NAMES)
    mean_bits = -np.mean(log_probs[np.arange(len(X)), rows]) / LN2
    assert model.score(X, NAMES) == pytest.approx(-mean_bits, rel=1e-12)
    weights = np.linspace(0.0, 2.0, len(X))
    weighted = -np.average(log_probs[np.arange(len(X)), rows], weights=weights) / LN2
    assert model.score(X, NAMES, sample_weight=weights) == pytest.approx(-weighted, rel=1e-12)


def test_the_model_is_crossent_trains_model_with_the_same_card() -> None:
    frame = pd.DataFrame(X, columns=IRIS.feature_names)
    model = SoftmaxClassifier(hidden=(8,), epochs=3).fit(frame, NAMES)
    card = model.model_.card
    assert card.feature_names == IRIS.feature_names
    assert card.classes == ["setosa", "versicolor", "virginica"]
    assert card.hidden == [8]
    assert card.options["epochs"] == 3
    assert len(model.history_) == model.n_iter_ == 3


def test_parameters_round_trip_and_bad_ones_name_themselves() -> None:
    model = SoftmaxClassifier(hidden=(16,), learning_rate=0.05, random_state=3)
    assert model.get_params()["hidden"] == (16,)
    copy = clone(model).set_params(epochs=2, objective="kl")
    assert copy.get_params()["epochs"] == 2
    assert copy.get_params()["objective"] == "kl"
    assert copy.get_params()["learning_rate"] == 0.05
    with pytest.raises(ValueError, match=r"`learning_rate` must be a finite number > 0; got -1"):
        SoftmaxClassifier(learning_rate=-1).fit(X, NAMES)
    with pytest.raises(ValueError, match=r"`objective` must be one of .*; got 'hinge'"):
        SoftmaxClassifier(objective="hinge").fit(X, NAMES)
    with pytest.raises(ValueError, match=r"`hidden` must be a sequence .*; got 64"):
        SoftmaxClassifier(hidden=64).fit(X, NAMES)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"`hidden` .*; got \(8, 0\)"):
        SoftmaxClassifier(hidden=(8, 0)).fit(X, NAMES)
    with pytest.raises(ValueError, match=r"at least 2 classes.*got 1 class, 'setosa'"):
        SoftmaxClassifier().fit(X[:10], NAMES[:10])


def test_random_state_seeds_like_crossent_trains_seed() -> None:
    first = SoftmaxClassifier(epochs=2, random_state=7).fit(X, NAMES).predict_proba(X)
    again = SoftmaxClassifier(epochs=2, random_state=7).fit(X, NAMES).predict_proba(X)
    other = SoftmaxClassifier(epochs=2, random_state=8).fit(X, NAMES).predict_proba(X)
    drawn = SoftmaxClassifier(epochs=2, random_state=np.random.RandomState(0))
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)
    assert drawn.fit(X, NAMES).predict_proba(X).shape == (150, 3)


def test_pipeline_grid_search_and_cross_validation_in_bits() -> None:
    pipeline = Pipeline([("scale", StandardScaler()), ("softmax", SoftmaxClassifier(epochs=4))])
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    scores = cross_val_score(pipeline, X, NAMES, cv=folds, scoring=neg_nll_bits)
    default = cross_val_score(pipeline, X, NAMES, cv=folds)  # the estimator's own score
    nats = cross_val_score(pipeline, X, NAMES, cv=folds, scoring="neg_log_loss")
    np.testing.assert_allclose(scores, default, rtol=1e-12)
    np.testing.assert_allclose(scores, nats / LN2, rtol=1e-9)
    assert np.all(np.isfinite(scores))
    assert np.all(scores < 0)

    grid = {"softmax__weight_decay": [1e-3, 1.0], "softmax__hidden": [(), (4,)]}
    search = GridSearchCV(pipeline, grid, cv=folds, scoring=neg_nll_bits).fit(X, NAMES)
    means = search.cv_results_["mean_test_score"]
    assert search.best_score_ == pytest.approx(means.max())
    assert search.best_params_["softmax__weight_decay"] == 1e-3  # λ = 1 underfits iris
    assert set(search.predict(X)) == set(NAMES)


def test_scorers_in_bits_equal_log_loss_over_ln_2_with_text_labels() -> None:
    model = LogisticRegression(max_iter=1000).fit(X, NAMES)
    probs = model.predict_proba(X)
    expected = log_loss(NAMES, probs) / LN2
    assert nll_bits(NAMES, probs) == pytest.approx(expected, rel=1e-12)
    assert nll_bits(NAMES, probs, labels=model.classes_) == pytest.approx(expected, rel=1e-12)
    assert neg_nll_bits(model, X, NAMES) == pytest.approx(-expected, rel=1e-12)
    assert get_scorer("neg_log_loss")(model, X, NAMES) / LN2 == pytest.approx(-expected)


def test_the_scorer_takes_a_fold_that_lacks_a_class() -> None:
    model = SoftmaxClassifier(epochs=3).fit(X, NAMES)
    only_two = NAMES != "virginica"
    log_probs = model.predict_log_proba(X[only_two])
    rows = np.searchsorted(model.classes_, NAMES[only_two])
    expected = np.mean(log_probs[np.arange(len(rows)), rows]) / LN2
    assert neg_nll_bits(model, X[only_two], NAMES[only_two]) == pytest.approx(expected)
    with pytest.raises(ValueError, match="contain different number of classes"):
        get_scorer("neg_log_loss")(model, X[only_two], NAMES[only_two])  # what bits fixes


def test_a_label_the_model_never_saw_is_an_error_naming_it() -> None:
    model = SoftmaxClassifier(epochs=1).fit(X, NAMES)
    unseen = NAMES.copy().astype(object)
    unseen[4] = "rose"
    with pytest.raises(ValueError, match=r"label 'rose' at row 4, which is not one of the classes"):
        neg_nll_bits(model, X, unseen)
    with pytest.raises(ValueError, match=r"`y_prob` must have one column per label"):
        nll_bits(NAMES, model.predict_proba(X)[:, :2])
