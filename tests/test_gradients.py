"""Gradients: gradcheck in float64, and 0 · log 0 = 0 in gradients (no NaN, the exact limit)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings

import crossent
from tests.conftest import batches, random_logits, random_probs

INF = math.inf


@settings(max_examples=15)  # gradcheck is slow; the shapes and −inf patterns still vary
@given(batches(max_rows=3, max_classes=5))
def test_gradcheck_entropy_and_cross_entropy_of_logits_with_minus_inf(batch: tuple) -> None:
    rng, shape = batch
    z = torch.from_numpy(random_logits(rng, shape)).requires_grad_(True)
    w = torch.from_numpy(random_logits(rng, shape)).requires_grad_(True)
    # target_logits puts no mass where w is −inf; pred_logits may be −inf only where that mass is 0.
    pred = torch.where(torch.isinf(w.detach()), z.detach(), z.detach().clamp(min=-1e3))
    pred.requires_grad_(True)

    assert torch.autograd.gradcheck(lambda a: crossent.entropy(logits=a), (z,))
    assert torch.autograd.gradcheck(
        lambda t, q: crossent.cross_entropy(target_logits=t, pred_logits=q), (w, pred)
    )
    assert torch.autograd.gradcheck(
        lambda t, q: crossent.kl_divergence(target_logits=t, pred_logits=q), (w, pred)
    )


@settings(max_examples=15)
@given(batches(max_rows=3, max_classes=5))
def test_gradcheck_probabilities_away_from_zero(batch: tuple) -> None:
    rng, shape = batch
    p = torch.from_numpy(random_probs(rng, shape, zero_fraction=0.0) + 0.05).requires_grad_(True)
    q = torch.from_numpy(random_probs(rng, shape, zero_fraction=0.0) + 0.05).requires_grad_(True)
    # The formulas hold for any positive arrays; gradcheck's perturbations leave the simplex.
    args = {"validate": False, "base": 2}
    assert torch.autograd.gradcheck(lambda a: crossent.entropy(a, **args), (p,))
    assert torch.autograd.gradcheck(
        lambda a, b: crossent.kl_divergence(target_probs=a, pred_probs=b, **args), (p, q)
    )
    assert torch.autograd.gradcheck(
        lambda a, b: crossent.cross_entropy(target_probs=a, pred_probs=b, **args), (p, q)
    )


def test_entropy_gradient_at_a_zero_probability_is_plus_inf_not_nan() -> None:
    # d(−p log p)/dp = −(log p + 1) → +inf as p → 0+: the exact one-sided derivative.
    p = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64, requires_grad=True)
    crossent.entropy(p, base=math.e).backward()
    expected = -(torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64)) + 1)
    torch.testing.assert_close(p.grad[:2], expected)
    assert p.grad[2] == INF


def test_cross_entropy_gradient_where_target_and_model_are_both_zero() -> None:
    # The term 0 · log q is 0 for every q: its gradient in q is 0, not 0/0 = NaN.
    q = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64, requires_grad=True)
    p = torch.tensor([0.25, 0.75, 0.0], dtype=torch.float64, requires_grad=True)
    crossent.cross_entropy(target_probs=p, pred_probs=q, base=math.e).backward()
    torch.testing.assert_close(q.grad, torch.tensor([-0.5, -1.5, 0.0], dtype=torch.float64))
    # ∂/∂p_j of −Σ p log q is −log q_j: +inf where q_j = 0 (moving mass there costs infinitely).
    assert p.grad.tolist() == [math.log(2), math.log(2), INF]


@pytest.mark.parametrize("learns", ["target", "pred"])
def test_cross_entropy_gradient_of_one_argument_while_the_other_is_fixed(learns: str) -> None:
    # Each argument gets its own gradient when it alone requires one: ∂H/∂p_j = −log2 q_j,
    # ∂H/∂q_j = −p_j / (q_j ln 2) (bits), by hand.
    p = torch.tensor([0.25, 0.75, 0.0], dtype=torch.float64, requires_grad=learns == "target")
    q = torch.tensor([0.5, 0.25, 0.25], dtype=torch.float64, requires_grad=learns == "pred")
    crossent.cross_entropy(target_probs=p, pred_probs=q).backward()
    if learns == "target":
        assert q.grad is None
        assert p.grad.tolist() == [1.0, 2.0, 2.0]
    else:
        assert p.grad is None
        expected = [-0.25 / (0.5 * math.log(2)), -0.75 / (0.25 * math.log(2)), 0.0]
        torch.testing.assert_close(q.grad, torch.tensor(expected, dtype=torch.float64))


def test_ignored_minus_inf_log_probs_give_exactly_zero_gradient() -> None:
    log_q = torch.tensor([[math.log(0.5), math.log(0.5), -INF]], requires_grad=True)
    loss = crossent.cross_entropy(target_probs=[[1.0, 0.0, 0.0]], pred_log_probs=log_q)
    loss.sum().backward()
    assert log_q.grad[0, 1:].tolist() == [0.0, 0.0]
    assert log_q.grad[0, 0].item() == pytest.approx(-1 / math.log(2))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_get_gradients_in_their_own_dtype(dtype: torch.dtype) -> None:
    z = torch.randn(3, 7, generator=torch.Generator().manual_seed(1)).to(dtype).requires_grad_()
    loss = crossent.nll(target_index=torch.tensor([0, 6, 3]), pred_logits=z, reduction="sum")
    assert loss.dtype == torch.float32
    loss.backward()
    assert z.grad.dtype == dtype
    reference = z.detach().float().requires_grad_()
    crossent.nll(
        target_index=torch.tensor([0, 6, 3]), pred_logits=reference, reduction="sum"
    ).backward()
    torch.testing.assert_close(
        z.grad.float(), reference.grad, rtol=0, atol=np.finfo(np.float16).eps * 4
    )
