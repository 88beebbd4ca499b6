"""The measures against independent references: SciPy, PyTorch, scikit-learn, float64 formulas."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
import torch.nn.functional as F
from hypothesis import given
from sklearn.metrics import log_loss

import crossent
from tests.conftest import batches, random_logits_and_forms, random_probs

BASES = [2, math.e, 10]


@given(batches())
@pytest.mark.parametrize("base", BASES)
def test_entropy_matches_scipy(base: float, batch: tuple) -> None:
    rng, shape = batch
    p = random_probs(rng, shape)
    expected = scipy.stats.entropy(p, axis=-1, base=base)
    np.testing.assert_allclose(crossent.entropy(p, base=base), expected, rtol=1e-12, atol=1e-14)


@given(batches())
@pytest.mark.parametrize("base", BASES)
def test_kl_divergence_matches_scipy_rel_entr(base: float, batch: tuple) -> None:
    rng, shape = batch
    p, q = random_probs(rng, shape), random_probs(rng, shape, zero_fraction=0.05)
    expected = scipy.special.rel_entr(p, q).sum(axis=-1) / math.log(base)
    actual = crossent.kl_divergence(target_probs=p, pred_probs=q, base=base)
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-14)


@given(batches())
def test_cross_entropy_matches_float64_formula(batch: tuple) -> None:
    rng, shape = batch
    p, q = random_probs(rng, shape), random_probs(rng, shape, zero_fraction=0.05)
    expected = -scipy.special.xlogy(p, q).sum(axis=-1) / math.log(2)
    actual = crossent.cross_entropy(target_probs=p, pred_probs=q)
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-14)


@given(batches())
def test_cross_entropy_on_logits_matches_torch(batch: tuple) -> None:
    rng, shape = batch
    p, z = random_probs(rng, shape), torch.from_numpy(rng.normal(size=shape))
    expected = F.cross_entropy(z, torch.from_numpy(p), reduction="none")
    actual = crossent.cross_entropy(target_probs=p, pred_logits=z, base=math.e)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@given(batches())
def test_index_targets_match_torch_cross_entropy(batch: tuple) -> None:
    rng, shape = batch
    z = torch.from_numpy(rng.normal(size=shape))
    y = torch.from_numpy(rng.integers(0, shape[-1], size=shape[:-1]))
    for reduction in ("none", "sum", "mean"):
        expected = F.cross_entropy(z, y, reduction=reduction)
        actual = crossent.nll(target_index=y, pred_logits=z, base=math.e, reduction=reduction)
        torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@given(batches())
def test_kl_divergence_matches_torch_kl_div(batch: tuple) -> None:
    rng, shape = batch
    p = torch.from_numpy(random_probs(rng, shape))
    log_q = torch.log_softmax(torch.from_numpy(rng.normal(size=shape)), dim=-1)
    expected = F.kl_div(log_q, p, reduction="none").sum(dim=-1)
    actual = crossent.kl_divergence(target_probs=p, pred_log_probs=log_q, base=math.e)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@given(batches())
def test_entropy_of_logits_matches_log_softmax(batch: tuple) -> None:
    rng, shape = batch
    z, log_p, p = random_logits_and_forms(rng, shape)
    expected = -scipy.special.xlogy(p, p).sum(axis=-1)
    np.testing.assert_allclose(
        crossent.entropy(logits=z, base=math.e), expected, rtol=1e-12, atol=1e-14
    )
    np.testing.assert_allclose(
        crossent.entropy(log_probs=log_p, base=math.e), expected, rtol=1e-12, atol=1e-14
    )


@given(batches(max_classes=6, min_classes=2))  # sklearn needs two classes
def test_nll_matches_sklearn_log_loss(batch: tuple) -> None:
    rng, (rows, classes) = batch
    # sklearn clips probabilities to [eps, 1 - eps]: keep them away from 0 to compare.
    q = random_probs(rng, (rows, classes), zero_fraction=0.0) * 0.9 + 0.1 / classes
    y = rng.integers(0, classes, size=rows)
    labels = list(range(classes))
    mean = crossent.nll(target_index=y, pred_probs=q, base=math.e, reduction="mean")
    total = crossent.nll(target_index=y, pred_probs=q, base=math.e, reduction="sum")
    assert mean == pytest.approx(log_loss(y, q, labels=labels), rel=1e-12)
    assert total == pytest.approx(log_loss(y, q, labels=labels, normalize=False), rel=1e-12)


@given(batches())
def test_numpy_and_torch_give_the_same_numbers(batch: tuple) -> None:
    rng, shape = batch
    p, q = random_probs(rng, shape), random_probs(rng, shape)
    from_numpy = crossent.kl_divergence(target_probs=p, pred_probs=q)
    from_torch = crossent.kl_divergence(
        target_probs=torch.from_numpy(p), pred_probs=torch.from_numpy(q)
    )
    assert isinstance(from_numpy, np.ndarray)
    assert isinstance(from_torch, torch.Tensor)
    np.testing.assert_array_equal(from_numpy, from_torch.numpy())


def test_perplexity_with_a_model_is_two_to_the_cross_entropy_by_hand() -> None:
    """p = (1/2, 1/2) coded with q = (1/4, 3/4): H(p, q) = 1/2 · 2 + 1/2 · log2(4/3) bits, so the
    perplexity is 2 · (4/3)^(1/2); the model matters (without it: H(p) = 1 bit, perplexity 2)."""
    p, q = [[0.5, 0.5]], [[0.25, 0.75]]
    expected = 2 * math.sqrt(4 / 3)
    assert crossent.perplexity(target_probs=p, pred_probs=q) == pytest.approx(expected, rel=1e-14)
    assert crossent.perplexity(target_probs=p) == pytest.approx(2.0, rel=1e-14)
    logits = np.log(q)  # the same model as logits, and observed classes 0 and 1
    per_example = crossent.perplexity(
        target_index=[0, 1], pred_logits=np.repeat(logits, 2, axis=0), reduction="none"
    )
    np.testing.assert_allclose(per_example, [4.0, 4 / 3], rtol=1e-14)
    mean = crossent.perplexity(target_index=[0, 1], pred_logits=np.repeat(logits, 2, axis=0))
    assert mean == pytest.approx(expected, rel=1e-14)  # 2 ** mean bits: the geometric mean
