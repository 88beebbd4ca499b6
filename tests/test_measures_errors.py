"""The measures' public functions refuse bad input with the argument's own name, the rule and
the value, word for word, and validate by default (mutation testing of measures.py found that
a name lost on the way to the check, or ``validate=False`` as a default, went unnoticed)."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch

import crossent

HALF = [0.5, 0.5]
TWO_ROWS = [HALF, HALF]

CASES: list[tuple[str, Callable[[], Any], type[Exception], str]] = [
    ("entropy validates by default", lambda: crossent.entropy(probs=[0.5, 0.6]), ValueError,
     "`probs` must sum to 1 (within 3.5e-04 for float64); it sums to 1.1"),
    ("perplexity validates by default", lambda: crossent.perplexity(target_probs=[0.5, 0.6]),
     ValueError, "`target_probs` must sum to 1 (within 3.5e-04 for float64); it sums to 1.1"),
    ("NaN logits", lambda: crossent.entropy(logits=[[0.0, math.nan]]), ValueError,
     "`logits` must be real numbers or -inf, not NaN or +inf; got nan at position (0, 1)"),
    ("dim outside the tensor", lambda: crossent.entropy(probs=[HALF], dim=3), ValueError,
     "`dim` must be an axis of `probs` (shape (1, 2)); got 3"),
    ("dim outside the model's tensor",
     lambda: crossent.cross_entropy(target_probs=HALF, pred_probs=HALF, dim=2), ValueError,
     "`dim` must be an axis of `pred_probs` (shape (2,)); got 2"),
    ("no classes", lambda: crossent.entropy(probs=np.zeros((2, 0))), ValueError,
     "`probs` must have at least one class along `dim`; got 0 classes"),
    ("NaN model", lambda: crossent.cross_entropy(target_probs=HALF,
                                                 pred_log_probs=[math.nan, 0.0]),
     ValueError, "`pred_log_probs` must not contain NaN; got nan at position (0,)"),
    ("a label outside the classes",
     lambda: crossent.nll(target_index=[0, 5], pred_probs=TWO_ROWS), ValueError,
     "`target_index` must be class indices in [0, 2); got 5 at position (1,)"),
    ("labels of another shape",
     lambda: crossent.nll(target_index=[0, 1, 1], pred_logits=[[0.0, 1.0], [2.0, 0.0]]), ValueError,
     "`target_index` must have the shape of `pred_logits` without its class axis 1: (2,); "
     "got (3,)"),
    ("float labels", lambda: crossent.nll(target_index=[0.5], pred_probs=[HALF]), TypeError,
     "`target_index` must hold integer class indices; got dtype float64 (convert with "
     ".astype(int) / .long() if the values are whole numbers)"),
    ("no model", lambda: crossent.cross_entropy(target_probs=HALF), TypeError,
     "pass exactly one of `pred_probs=`, `pred_log_probs=`, `pred_logits=` for the model "
     "(pred) distribution; got none"),
    ("labels without a model", lambda: crossent.perplexity(target_index=[0]), TypeError,
     "`target_index` needs a model: pass one of `pred_probs=`, ..."),
    ("two targets",
     lambda: crossent.kl_divergence(target_probs=HALF, target_logits=[0.0, 0.0],
                                    pred_probs=HALF),
     TypeError, "pass exactly one of `target_probs=`, `target_log_probs=`, `target_logits=`, "
     "`target_index=` for the true (target) distribution; got `target_probs`, `target_logits`"),
    ("two models",
     lambda: crossent.cross_entropy(target_probs=HALF, pred_logits=[0.0, 0.0], pred_probs=HALF),
     TypeError, "pass exactly one of `pred_probs=`, `pred_log_probs=`, `pred_logits=` for the "
     "model (pred) distribution; got `pred_probs`, `pred_logits`"),
    ("target and model of other shapes",
     lambda: crossent.cross_entropy(target_logits=[0.0, 0.0], pred_probs=[0.2, 0.3, 0.5]),
     ValueError, "`target_logits` must have the shape of `pred_probs`: (3,); got (2,)"),
    ("text for probabilities", lambda: crossent.entropy(probs="abc"), TypeError,
     "`probs` must be an array of numbers; got dtype <U3"),
    ("text for labels", lambda: crossent.nll(target_index="x", pred_probs=HALF), TypeError,
     "`target_index` must be an array of numbers; got dtype <U1"),
    ("no distribution", lambda: crossent.entropy(), TypeError,
     "pass exactly one of `probs=`, `log_probs=`, `logits=` for the distribution; got none"),
    ("a mean of nothing", lambda: crossent.entropy(probs=np.zeros((0, 2)), reduction="mean"),
     ValueError, "`reduction='mean'` needs at least one distribution; got none (the "
     "distributions have shape (0,))"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("call", "kind", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_each_error_names_the_argument_the_rule_and_the_value(
    call: Callable[[], Any], kind: type[Exception], message: str
) -> None:
    with pytest.raises(kind, match=f"^{re.escape(message)}$"):
        call()


def test_perplexity_takes_a_mean_or_none_but_not_a_sum() -> None:
    with pytest.raises(ValueError, match=r"`reduction` must be one of .*'none'.*'mean'.*'sum'"):
        crossent.perplexity(target_probs=HALF, reduction="sum")


def test_perplexity_of_labels_returns_what_it_was_given() -> None:
    q = [[0.5, 0.5], [0.25, 0.75]]  # NLL 1 bit, then log2(4/3): perplexity 2 ** the mean
    expected = 2 ** ((1 + math.log2(4 / 3)) / 2)
    found = crossent.perplexity(target_index=[0, 1], pred_probs=np.asarray(q))
    assert isinstance(found, np.generic | np.ndarray)  # NumPy in, NumPy out
    assert found == pytest.approx(expected, rel=1e-12)
    tensor = crossent.perplexity(target_index=torch.tensor([0, 1]), pred_probs=torch.tensor(q))
    assert isinstance(tensor, torch.Tensor)
    assert tensor.item() == pytest.approx(expected, rel=1e-6)


def test_kl_divergence_of_labels_is_their_nll() -> None:
    # one-hot p has H(p) = 0, so D(p ‖ q) = H(p, q) = −log2 q(y)
    q = np.asarray([[0.5, 0.25, 0.25], [0.125, 0.125, 0.75]])
    found = crossent.kl_divergence(target_index=[1, 2], pred_probs=q)
    np.testing.assert_allclose(found, [2.0, -math.log2(0.75)], rtol=1e-12)


def test_nll_of_a_batch_of_probabilities_has_one_value_per_label() -> None:
    q = np.asarray([[[0.5, 0.5], [0.25, 0.75], [1.0, 0.0]]])  # (1, 3, 2): classes last
    found = crossent.nll(target_index=[[0, 1, 0]], pred_probs=q)
    assert found.shape == (1, 3)
    np.testing.assert_allclose(found, [[1.0, -math.log2(0.75), 0.0]], rtol=1e-12)
