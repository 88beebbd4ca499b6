"""crossent's softmax classifier as a scikit-learn estimator, and scorers in bits.

:class:`SoftmaxClassifier` is the model and the minibatch SGD of ``crossent train`` (docs/theory.md
§1–§2: ŷ = softmax(z), θ chosen by SGD on the mean NLL), with scikit-learn's API, so it works
in ``Pipeline``, ``GridSearchCV`` and ``cross_val_score``. Its :meth:`~SoftmaxClassifier.score`
is −(mean NLL in bits): greater is better, as scikit-learn's model selection needs.

:func:`nll_bits` is the metric, the mean negative log-likelihood

    NLL = −(1/N) Σ_i log2 q_i(y_i)   bits per example,

which is ``sklearn.metrics.log_loss`` / ln 2; :func:`neg_nll_bits` is the scorer for
``scoring=`` (= ``neg_log_loss`` / ln 2). Both take labels of any kind, text included, and a
scorer's test fold need not hold every class.

Needs ``pip install 'crossent[classifier]'``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from crossent._extras import needs
from crossent.measures import nll

with needs("crossent.sklearn"):
    from sklearn.base import BaseEstimator, ClassifierMixin
    from sklearn.utils import check_random_state
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

    from crossent.classifier.data import LabelledData
    from crossent.classifier.options import SGDOptions
    from crossent.classifier.run import untrained
    from crossent.classifier.train import train

__all__ = ["SoftmaxClassifier", "neg_nll_bits", "nll_bits"]

_DEFAULTS = SGDOptions()  # crossent train's defaults, so that both fit the same model


class SoftmaxClassifier(ClassifierMixin, BaseEstimator):  # type: ignore[misc]
    """The softmax classifier of ``crossent train``: p(y | x, θ) = softmax(z)_y, with logits z
    of a linear map (multinomial logistic regression) or an MLP of the standardised features,
    fitted by minibatch SGD on the mean NLL with weight decay (λ/2)‖W‖².

    Args:
        hidden: widths of the MLP's ReLU hidden layers; ``()`` (default) is linear.
        learning_rate, momentum, weight_decay, epochs, batch_size, objective, schedule: the
            options of :class:`crossent.classifier.SGDOptions` (``crossent train``'s ``--lr``,
            ``--momentum``, ...), with the same defaults; ``objective`` is ``"nll"``,
            ``"cross-entropy"`` or ``"kl"``, equal for one-hot labels.
        random_state: the seed of the initial weights and the batch order (``--seed``); an
            int, or None / a ``RandomState`` to draw one.

    Attributes:
        classes_: the labels, sorted, shape ``(M,)``; columns of :meth:`predict_proba`.
        model_: the fitted :class:`crossent.classifier.SoftmaxClassifier` (a torch module).
        history_: the training loss per epoch, bits per example.
        n_features_in_, feature_names_in_: as scikit-learn sets them.
        n_iter_: epochs run.

    Predictions are computed in float64 from the trained float32 weights, so a row's
    prediction does not depend on the rows predicted with it.

    >>> from sklearn.datasets import load_iris
    >>> iris = load_iris()
    >>> names = iris.target_names[iris.target]  # text labels
    >>> model = SoftmaxClassifier(epochs=20).fit(iris.data, names)
    >>> model.classes_
    array(['setosa', 'versicolor', 'virginica'], dtype='<U10')
    >>> model.predict(iris.data[:2])
    array(['setosa', 'setosa'], dtype='<U10')
    >>> bits = -model.score(iris.data, names)  # mean NLL, bits per example
    >>> bool(0 < bits < 0.5)
    True
    """

    def __init__(
        self,
        *,
        hidden: Sequence[int] = (),
        learning_rate: float = _DEFAULTS.learning_rate,
        momentum: float = _DEFAULTS.momentum,
        weight_decay: float = _DEFAULTS.weight_decay,
        epochs: int = _DEFAULTS.epochs,
        batch_size: int = _DEFAULTS.batch_size,
        objective: str = _DEFAULTS.objective,
        schedule: str = _DEFAULTS.schedule,
        random_state: Any = _DEFAULTS.seed,
    ) -> None:
        self.hidden = hidden
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.weight_decay = weight_decay
        self.epochs = epochs
        self.batch_size = batch_size
        self.objective = objective
        self.schedule = schedule
        self.random_state = random_state

    def fit(self, X: Any, y: Any) -> SoftmaxClassifier:
        """Fit the model to features ``X`` ``(N, D)`` and labels ``y`` ``(N,)`` of any kind,
        standardising the features on ``X`` as ``crossent train`` does on its training part.

        Args:
            X: ``(N, D)`` features: an array or a DataFrame (whose column names are kept).
            y: ``(N,)`` labels of any kind (text, integers, ...), at least two classes.

        Returns:
            self, fitted.
        """
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        self.classes_, labels = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                "`y` must hold at least 2 classes to classify; "
                f"got 1 class, {self.classes_.tolist()[0]!r}"
            )
        options = self._options()
        data = LabelledData(
            X, labels, [str(c) for c in self.classes_], self._feature_names(), "y", "fit"
        )
        self.model_ = untrained(data, _widths(self.hidden), options)
        self.history_ = train(self.model_, X, labels, options).train_bits
        self.n_iter_ = options.epochs
        return self

    def predict_log_proba(self, X: Any) -> np.ndarray:
        """log p(y | x) in nats, ``(N, M)`` float64, columns in the order of ``classes_``.

        Args:
            X: ``(N, D)`` features: an array, or a DataFrame with the fitted feature names.
        """
        check_is_fitted(self)
        features = validate_data(self, X, dtype=np.float64, reset=False)
        model = self.model_
        float64 = {
            name: tensor.double()
            for name, tensor in itertools.chain(model.named_parameters(), model.named_buffers())
        }
        with torch.no_grad():
            logits = torch.func.functional_call(model, float64, (torch.tensor(features),))
        log_probs: np.ndarray = torch.log_softmax(logits, dim=-1).numpy()
        return log_probs

    def predict_proba(self, X: Any) -> np.ndarray:
        """p(y | x), ``(N, M)`` float64, rows summing to 1, columns in the order of ``classes_``.

        Args:
            X: ``(N, D)`` features: an array, or a DataFrame with the fitted feature names.
        """
        probs: np.ndarray = np.exp(self.predict_log_proba(X))
        return probs

    def predict(self, X: Any) -> np.ndarray:
        """The most probable label of each row, ``(N,)``, taken from ``classes_``.

        Args:
            X: ``(N, D)`` features: an array, or a DataFrame with the fitted feature names.
        """
        log_probs = self.predict_log_proba(X)  # first: it checks that the model is fitted
        labels: np.ndarray = self.classes_[np.argmax(log_probs, axis=1)]
        return labels

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """−(mean NLL) = (1/N) Σ_i log2 p(y_i | x_i), in bits per example: 0 is perfect, and
        greater is better (model selection maximises it).

        Args:
            X: ``(N, D)`` features: an array, or a DataFrame with the fitted feature names.
            y: ``(N,)`` labels, each one of ``classes_``.
            sample_weight: ``(N,)`` weights of the examples, or None.
        """
        return neg_nll_bits(self, X, y, sample_weight=sample_weight)

    def _options(self) -> SGDOptions:
        """The SGD options of the parameters, checked by :class:`SGDOptions`."""
        return SGDOptions(
            learning_rate=self.learning_rate,
            momentum=self.momentum,
            weight_decay=self.weight_decay,
            epochs=self.epochs,
            batch_size=self.batch_size,
            objective=self.objective,  # type: ignore[arg-type]
            schedule=self.schedule,  # type: ignore[arg-type]
            seed=_seed(self.random_state),
        )

    def _feature_names(self) -> list[str]:
        names = getattr(self, "feature_names_in_", None)
        if names is None:
            return [f"x{i}" for i in range(self.n_features_in_)]
        return [str(name) for name in names]


def nll_bits(y_true: Any, y_prob: Any, *, labels: Any = None, sample_weight: Any = None) -> float:
    """The mean negative log-likelihood −(1/N) Σ_i log2 q_i(y_i), in bits per example:
    ``sklearn.metrics.log_loss`` / ln 2, computed exactly (no clipping: q_i(y_i) = 0 gives inf).

    Args:
        y_true: the observed labels, ``(N,)``, of any kind (text included).
        y_prob: the predicted probabilities q_i, ``(N, M)``, rows summing to 1.
        labels: the label of each column of ``y_prob``; default the sorted labels of
            ``y_true``, which must then number M.
        sample_weight: weights of the examples, ``(N,)``, for a weighted mean.

    >>> nll_bits(["cat", "dog"], [[0.5, 0.5], [0.25, 0.75]], labels=["dog", "cat"])
    1.5
    """
    probs = np.asarray(y_prob, dtype=np.float64)
    classes = np.unique(column_or_1d(y_true)) if labels is None else np.asarray(labels)
    if probs.ndim != 2 or probs.shape[1] != len(classes):
        raise ValueError(
            f"`y_prob` must have one column per label of {list(classes)}; got shape {probs.shape}"
        )
    bits = nll(target_index=_positions(y_true, classes), pred_probs=probs, base=2)
    return float(np.average(bits, weights=sample_weight))


def neg_nll_bits(estimator: Any, X: Any, y: Any, sample_weight: Any = None) -> float:
    """The scorer (1/N) Σ_i log2 q(y_i | x_i) = −(mean NLL in bits), for ``scoring=``: equal to
    scikit-learn's ``neg_log_loss`` / ln 2, greater is better.

    Works for any fitted classifier with ``classes_`` and ``predict_log_proba`` (or
    ``predict_proba``), with labels of any kind, and on a test fold that lacks some classes;
    a label the estimator never saw is an error.

    Args:
        estimator: a fitted classifier.
        X: ``(N, D)`` features.
        y: ``(N,)`` labels.
        sample_weight: ``(N,)`` weights of the examples, or None.

    >>> import math
    >>> from sklearn.datasets import load_iris
    >>> from sklearn.linear_model import LogisticRegression
    >>> from sklearn.metrics import get_scorer
    >>> iris = load_iris()
    >>> names = iris.target_names[iris.target]
    >>> fitted = LogisticRegression(max_iter=1000).fit(iris.data, names)
    >>> bits = neg_nll_bits(fitted, iris.data, names)
    >>> nats = get_scorer("neg_log_loss")(fitted, iris.data, names)
    >>> math.isclose(bits, nats / math.log(2), rel_tol=1e-12)
    True
    """
    positions = _positions(y, np.asarray(estimator.classes_))
    if hasattr(estimator, "predict_log_proba"):
        with np.errstate(divide="ignore"):  # many take log(predict_proba): log 0 = −inf is exact
            prediction = {"pred_log_probs": estimator.predict_log_proba(X)}
    else:
        prediction = {"pred_probs": estimator.predict_proba(X)}
    bits = nll(target_index=positions, **prediction, base=2)
    return -float(np.average(bits, weights=sample_weight))


def _positions(y: Any, classes: np.ndarray) -> np.ndarray:
    """The column of each label of ``y`` among ``classes``; a label not among them is an error."""
    position = {label: column for column, label in enumerate(classes.tolist())}
    labels = column_or_1d(y).tolist()
    try:
        return np.array([position[label] for label in labels], dtype=np.int64)
    except KeyError as error:
        row = next(i for i, label in enumerate(labels) if label not in position)
        raise ValueError(
            f"`y` has the label {error.args[0]!r} at row {row}, which is not one of the "
            f"classes {classes.tolist()!r}"
        ) from None


def _widths(hidden: Any) -> list[int]:
    """``hidden`` as a list of positive layer widths."""
    widths = list(hidden) if isinstance(hidden, Sequence) and not isinstance(hidden, str) else None
    if widths is None or not all(_positive_int(width) for width in widths):
        raise ValueError(
            f"`hidden` must be a sequence of positive layer widths such as (64, 32), or () "
            f"for a linear model; got {hidden!r}"
        )
    return [int(width) for width in widths]


def _positive_int(value: Any) -> bool:
    return _integer(value) and value > 0


def _integer(value: Any) -> bool:
    """An int or a NumPy integer; not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _seed(random_state: Any) -> int:
    """An int is the seed itself (``crossent train --seed``); None or a RandomState draws one."""
    if _integer(random_state):
        return int(random_state)
    return int(check_random_state(random_state).randint(2**31 - 1))
