"""The edge cases of docs/prior-art.md §1 where the anchors fail, with crossent's answer pinned.

Each test names the anchor's behaviour it improves on; the expected values come from float64
formulas written out in the test.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import crossent

INF = math.inf


def test_soft_target_with_a_minus_inf_logit_is_finite() -> None:
    # PyTorch and optax give nan; optax's safe_ variant gives 0.613 nats.
    logits = torch.tensor([0.0, 1.0, -INF], dtype=torch.float64, requires_grad=True)
    target = torch.tensor([0.3, 0.7, 0.0], dtype=torch.float64)
    loss = crossent.cross_entropy(target_probs=target, pred_logits=logits, base=math.e)
    log_q = np.array([0.0, 1.0]) - np.log(1 + math.e)
    assert loss.item() == pytest.approx(-(0.3 * log_q[0] + 0.7 * log_q[1]), rel=1e-15)
    assert loss.item() == pytest.approx(0.613, abs=5e-4)
    loss.backward()
    softmax = np.array([1.0, math.e, 0.0]) / (1 + math.e)
    np.testing.assert_allclose(logits.grad.numpy(), softmax - target.numpy(), rtol=1e-14)


def test_minus_inf_logits_give_zero_terms_in_entropy_and_its_gradient() -> None:
    logits = torch.tensor([[2.0, -INF, 0.5], [-INF, -INF, 1.0]], dtype=torch.float64)
    logits.requires_grad_(True)
    h = crossent.entropy(logits=logits, base=math.e)
    p = torch.softmax(logits.detach()[0, [0, 2]], dim=0)
    assert h[0].item() == pytest.approx(-(p * p.log()).sum().item(), rel=1e-15)
    assert h[1].item() == 0.0  # one possible class: no uncertainty
    h.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 1] == 0.0
    assert (logits.grad[1] == 0.0).all()


def test_all_minus_inf_row_is_an_error_not_nan() -> None:
    # PyTorch: nan; SciPy: nan and a warning; optax: nan.
    logits = np.array([[0.0, 1.0], [-INF, -INF]])
    with pytest.raises(ValueError, match=r"`pred_logits`: row \(1,\) is -inf everywhere"):
        crossent.cross_entropy(target_index=[0, 0], pred_logits=logits)


def test_target_mass_where_the_model_says_zero_is_plus_inf_not_clipped() -> None:
    # sklearn's log_loss clips to a finite 36.04 (float64); PyTorch gives inf.
    q = np.array([[1.0, 0.0], [0.5, 0.5]])
    assert crossent.nll(target_index=[1, 0], pred_probs=q).tolist() == [INF, 1.0]
    assert crossent.cross_entropy(target_probs=[[0.5, 0.5]], pred_probs=q[:1])[0] == INF
    assert crossent.kl_divergence(target_probs=[[0.5, 0.5]], pred_probs=q[:1])[0] == INF
    assert crossent.nll(target_index=[1, 0], pred_probs=q, reduction="sum") == INF


def test_gradient_where_the_model_says_zero_is_finite_for_logits() -> None:
    logits = torch.tensor([0.0, -INF], dtype=torch.float64, requires_grad=True)
    loss = crossent.nll(target_index=torch.tensor(1), pred_logits=logits, base=math.e)
    assert loss.item() == INF
    loss.backward()
    # d/dz of −log softmax(z)_1 is softmax(z) − onehot(1): finite even at z_1 = −inf.
    assert logits.grad.tolist() == [1.0, -1.0]


def test_rows_not_summing_to_one_are_an_error_not_silently_renormalised() -> None:
    # PyTorch: silent, loss scaled; SciPy: renormalised silently; sklearn: warns.
    with pytest.raises(ValueError, match=r"`target_probs` must sum to 1 .*row \(1,\) sums to 0.9"):
        crossent.cross_entropy(
            target_probs=[[0.5, 0.5], [0.4, 0.5]], pred_probs=[[0.5, 0.5], [0.5, 0.5]]
        )


def test_negative_probabilities_are_an_error() -> None:
    # PyTorch: silent (CE) or nan (kl_div); SciPy: −inf, silently.
    with pytest.raises(ValueError, match=r"`pred_probs` must be probabilities in \[0, 1\]; "):
        crossent.kl_divergence(target_probs=[0.5, 0.5], pred_probs=[1.2, -0.2])


def test_out_of_range_class_names_value_and_position() -> None:
    # PyTorch CPU: IndexError; CUDA: device assert; sklearn: another class set; optax: nan.
    with pytest.raises(ValueError, match=r"in \[0, 3\); got 3 at position \(1,\)"):
        crossent.nll(target_index=[0, 3], pred_logits=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"got -1 at position \(0,\)"):
        crossent.nll(target_index=[-1, 0], pred_logits=np.zeros((2, 3)))


def test_probabilities_passed_as_log_probabilities_are_caught() -> None:
    # PyTorch nll_loss / kl_div: a wrong number, silently.
    probs = np.array([[0.2, 0.8], [0.6, 0.4]])
    with pytest.raises(ValueError, match=r"look like probabilities: pass them as `pred_probs=`"):
        crossent.nll(target_index=[1, 0], pred_log_probs=probs)
    with pytest.raises(ValueError, match=r"look like log-probabilities: pass them as `pred_log_p"):
        crossent.nll(target_index=[1, 0], pred_probs=np.log(probs))


def test_probabilities_passed_as_logits_warn_at_the_callers_line() -> None:
    with pytest.warns(UserWarning, match=r"look like probabilities.*`pred_probs=`") as caught:
        crossent.nll(target_index=[1, 0], pred_logits=[[0.2, 0.8], [0.6, 0.4]])
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crossent.entropy(logits=[0.0, 1.0])  # plausible logits: no warning


def test_float16_logits_at_the_edge_of_their_range_are_computed_in_float32() -> None:
    # PyTorch and optax: nan for f16 logits [6e4, 0, −6e4] with a soft target.
    logits = torch.tensor([6e4, 0.0, -6e4], dtype=torch.float16)
    target = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float16)
    loss = crossent.cross_entropy(target_probs=target, pred_logits=logits, base=math.e)
    assert loss.dtype == torch.float32
    exact = 0.5 * 0.0 + 0.5 * float(logits[0])  # −log softmax: 0 for class 0, 6e4 for class 1
    assert loss.item() == pytest.approx(exact, rel=1e-6)


def test_bfloat16_logits_with_50k_classes_return_float32_close_to_exact() -> None:
    # PyTorch returns bf16: 13.9375 where the exact value is 13.9271.
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(0, 2, size=(4, 50_000))).to(torch.bfloat16)
    target = torch.tensor([3, 14, 159, 2653])
    loss = crossent.nll(target_index=target, pred_logits=logits, base=math.e, reduction="mean")
    exact = torch.nn.functional.cross_entropy(logits.double(), target)  # same bf16 inputs
    assert loss.dtype == torch.float32
    assert abs(loss.item() - exact.item()) < 1e-5 * exact.item()


def test_zero_classes_and_mean_of_no_rows_are_errors() -> None:
    with pytest.raises(ValueError, match="at least one class"):
        crossent.entropy(np.zeros((2, 0)))
    with pytest.raises(ValueError, match=r"`reduction='mean'` needs at least one distribution"):
        crossent.entropy(np.zeros((0, 3)), reduction="mean")
    assert crossent.entropy(np.zeros((0, 3)), reduction="sum") == 0.0
    assert crossent.entropy(np.zeros((0, 3))).shape == (0,)


def test_entropy_of_a_certain_outcome_is_plus_zero() -> None:
    value = crossent.entropy([0.0, 1.0, 0.0])
    assert value == 0.0
    assert math.copysign(1.0, value) == 1.0


def test_single_class_has_zero_entropy_and_zero_nll() -> None:
    assert crossent.entropy(logits=[[3.0], [-2.0]]).tolist() == [0.0, 0.0]
    assert crossent.nll(target_index=[0], pred_logits=[[5.0]]).tolist() == [0.0]


@pytest.mark.parametrize(
    ("q_tiny", "dtype"),
    [(1e-320, np.float64), (1e-39, np.float32)],  # subnormal model mass
)
def test_kl_with_a_subnormal_model_probability_is_finite(q_tiny: float, dtype: type) -> None:
    # Found in review: log(p / q) overflowed p / q to inf where D = H(p, q) − H(p) is finite.
    p = np.array([1.0, 0.0], dtype=dtype)
    q = np.array([q_tiny, 1.0], dtype=dtype)
    d = crossent.kl_divergence(target_probs=p, pred_probs=q, base=math.e)
    assert math.isfinite(d)
    assert d == pytest.approx(-math.log(float(q[0])), rel=1e-6)
    tracked = crossent.kl_divergence(
        target_probs=torch.from_numpy(p), pred_probs=torch.from_numpy(q).requires_grad_(True)
    )
    assert tracked.item() == pytest.approx(
        float(crossent.kl_divergence(target_probs=p, pred_probs=q))
    )


@pytest.mark.parametrize(
    "pred",
    [{"pred_probs": [1.0, 0.0]}, {"pred_log_probs": [0.0, -INF]}, {"pred_logits": [0.0, -INF]}],
)
def test_kl_gradient_in_the_target_where_both_rule_a_class_out_is_not_nan(pred: dict) -> None:
    # Found in review: −inf − (−inf) = NaN reached ∂D/∂p for a class with p = q = 0.
    p = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    crossent.kl_divergence(target_probs=p, **pred, validate=False).backward()
    assert p.grad.tolist() == [1 / math.log(2), 0.0]  # d/dp p log2(p/q) = log2(p/q) + 1/ln 2
