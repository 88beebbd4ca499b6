"""The identities of docs/theory.md §3–§6 on random numbers: Gibbs, D = H(p, q) − H(p), NLL = CE,
..."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch
from hypothesis import given

import crossent
from crossent import measures
from tests.conftest import batches, random_logits, random_logits_and_forms, random_probs


@given(batches())
def test_gibbs_inequality_and_kl_is_non_negative(batch: tuple) -> None:
    rng, shape = batch
    p, q = random_probs(rng, shape), random_probs(rng, shape)
    h_p = crossent.entropy(p)
    h_pq = crossent.cross_entropy(target_probs=p, pred_probs=q)
    assert np.all(h_pq >= h_p - 1e-12)
    assert np.all(crossent.kl_divergence(target_probs=p, pred_probs=q) >= -1e-12)


@given(batches())
def test_kl_of_a_distribution_with_itself_is_exactly_zero(batch: tuple) -> None:
    rng, shape = batch
    p = random_probs(rng, shape)
    np.testing.assert_array_equal(crossent.kl_divergence(target_probs=p, pred_probs=p), 0.0)
    np.testing.assert_allclose(
        crossent.cross_entropy(target_probs=p, pred_probs=p), crossent.entropy(p), rtol=1e-15
    )


@given(batches())
def test_cross_entropy_is_entropy_plus_kl(batch: tuple) -> None:
    rng, shape = batch
    p, q = random_probs(rng, shape), random_probs(rng, shape)
    h_pq = crossent.cross_entropy(target_probs=p, pred_probs=q)
    h_plus_d = crossent.entropy(p) + crossent.kl_divergence(target_probs=p, pred_probs=q)
    np.testing.assert_allclose(h_pq, h_plus_d, rtol=1e-12, atol=1e-12)


@given(batches())
def test_nll_of_one_hot_targets_is_their_cross_entropy(batch: tuple) -> None:
    """The NLL of observed classes (gathered: −log q_y) against SciPy's log-softmax, and
    against the cross entropy and KL divergence of their one-hot distributions (summed over
    every class, another code path)."""
    rng, (rows, classes) = batch
    z = random_logits(rng, (rows, classes))
    y = np.array([rng.choice(np.flatnonzero(np.isfinite(row))) for row in z])
    one_hot = np.eye(classes)[y]
    as_nll = crossent.nll(target_index=y, pred_logits=z, base=math.e)
    expected = -scipy.special.log_softmax(z, axis=-1)[np.arange(rows), y]
    np.testing.assert_allclose(as_nll, expected, rtol=1e-13, atol=1e-14)
    for measure in (crossent.cross_entropy, crossent.kl_divergence):
        np.testing.assert_allclose(
            as_nll, measure(target_probs=one_hot, pred_logits=z, base=math.e), rtol=1e-13
        )


@given(batches())
def test_base_conversion_and_perplexity(batch: tuple) -> None:
    rng, shape = batch
    p = random_probs(rng, shape)
    bits, nats, hartleys = (crossent.entropy(p, base=b) for b in (2, math.e, 10))
    np.testing.assert_allclose(bits * math.log(2), nats, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(hartleys * math.log(10), nats, rtol=1e-14, atol=1e-15)
    per_row = crossent.perplexity(target_probs=p, reduction="none")
    np.testing.assert_allclose(per_row, 2.0**bits, rtol=1e-13)
    np.testing.assert_allclose(per_row, np.exp(nats), rtol=1e-13)
    assert crossent.perplexity(target_probs=p) == pytest.approx(2.0 ** np.mean(bits), rel=1e-13)


@given(batches())
def test_same_minimiser_kl_ce_and_nll_have_equal_gradients(batch: tuple) -> None:
    """D(p ‖ q) − H(p, q) = −H(p) does not depend on the model, so their gradients agree; for
    one-hot p the NLL of the observed classes (a gather, not a sum) has that gradient too,
    softmax(z) − p."""
    rng, shape = batch
    p, logits = random_probs(rng, shape), torch.from_numpy(rng.normal(size=shape))
    grads = []
    for measure in (crossent.cross_entropy, crossent.kl_divergence):
        z = logits.clone().requires_grad_(True)
        measure(target_probs=torch.from_numpy(p), pred_logits=z, reduction="sum").backward()
        grads.append(z.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-12, atol=1e-12)
    y = torch.from_numpy(rng.integers(0, shape[1], size=shape[0]))
    z = logits.clone().requires_grad_(True)
    crossent.nll(target_index=y, pred_logits=z, reduction="sum", base=math.e).backward()
    expected = torch.softmax(logits, -1) - torch.nn.functional.one_hot(y, shape[1])
    torch.testing.assert_close(z.grad, expected, rtol=1e-12, atol=1e-12)


@given(batches(max_rows=3, max_classes=4))
def test_class_axis_can_be_any_axis(batch: tuple) -> None:
    rng, (rows, classes) = batch
    p = random_probs(rng, (rows, 2, classes))
    q = random_probs(rng, (rows, 2, classes))
    last = crossent.kl_divergence(target_probs=p, pred_probs=q)
    first = crossent.kl_divergence(
        target_probs=np.moveaxis(p, -1, 0), pred_probs=np.moveaxis(q, -1, 0), dim=0
    )
    np.testing.assert_array_equal(last, first)
    assert last.shape == (rows, 2)


@given(batches())
def test_probs_log_probs_and_logits_describe_the_same_distribution(batch: tuple) -> None:
    rng, shape = batch
    z, log_p, p = random_logits_and_forms(rng, shape)
    values = [
        crossent.entropy(logits=z),
        crossent.entropy(log_probs=log_p),
        crossent.entropy(p),
    ]
    for value in values[1:]:
        np.testing.assert_allclose(value, values[0], rtol=1e-12, atol=1e-14)


@given(batches(max_rows=9))
def test_the_blocked_and_the_differentiable_paths_match_scipy(batch: tuple) -> None:
    """Without gradients a measure runs over blocks of rows, with them over the whole batch
    through the autograd primitives: both against SciPy, with blocks of one row."""
    rng, shape = batch
    p, q = random_probs(rng, shape), random_probs(rng, shape, zero_fraction=0.0)
    expected_ce = -(scipy.special.xlogy(p, q)).sum(-1) / math.log(2)
    expected_kl = scipy.stats.entropy(p, q, axis=-1, base=2)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(measures, "_BLOCK_ELEMENTS", 1)  # a block per row
        blocked = [m(target_probs=torch.from_numpy(p), pred_probs=torch.from_numpy(q))
                   for m in (crossent.cross_entropy, crossent.kl_divergence)]  # fmt: skip
    tracked = torch.from_numpy(q).requires_grad_(True)
    whole = [m(target_probs=torch.from_numpy(p), pred_probs=tracked).detach()
             for m in (crossent.cross_entropy, crossent.kl_divergence)]  # fmt: skip
    for values in (blocked, whole):
        np.testing.assert_allclose(values[0].numpy(), expected_ce, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(values[1].numpy(), expected_kl, rtol=1e-10, atol=1e-13)


@given(batches(max_rows=9))
def test_blocks_of_rows_give_the_values_of_the_whole_batch(batch: tuple) -> None:
    """Without autograd the CPU path runs over blocks of rows; shrink them to a few rows."""
    rng, (rows, classes) = batch
    p = torch.from_numpy(random_probs(rng, (3, rows, classes)))
    z = torch.from_numpy(random_logits(rng, (3, rows, classes)))
    y = torch.from_numpy(rng.integers(0, classes, size=(3, rows)))
    calls = [
        lambda p, z: crossent.entropy(logits=z),
        lambda p, z: crossent.cross_entropy(target_probs=p, pred_logits=z),
        lambda p, z: crossent.kl_divergence(target_probs=p, pred_probs=torch.softmax(z, -1)),
        lambda p, z: crossent.nll(target_index=y, pred_log_probs=torch.log_softmax(z, -1)),
    ]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(crossent.measures, "_BLOCK_ELEMENTS", 2 * classes)  # two rows a block
        blockwise = [call(p, z) for call in calls]
    with_autograd = [call(p, z.clone().requires_grad_(True)).detach() for call in calls]
    for got, expected in zip(blockwise, with_autograd, strict=True):
        assert got.shape == (3, rows)
        torch.testing.assert_close(got, expected, rtol=1e-13, atol=1e-14)
