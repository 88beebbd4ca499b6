"""Bad input: each error names the argument, the rule and the value (and where it is)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import crossent
from crossent._checks import sum_tolerance

P = [[0.5, 0.5], [0.25, 0.75]]


@pytest.mark.parametrize(
    ("base", "error", "message"),
    [
        (1, ValueError, r"`base` must be a finite positive number other than 1; got 1"),
        (0, ValueError, r"`base` must be a finite positive number other than 1; got 0"),
        (-2, ValueError, r"got -2"),
        (math.inf, ValueError, r"got inf"),
        ("bits", TypeError, r"`base` must be a real number such as 2 \(bits\).*got 'bits'"),
        (True, TypeError, r"got True"),
    ],
)
def test_base(base: object, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        crossent.entropy(P, base=base)


def test_reduction() -> None:
    with pytest.raises(
        ValueError, match=r"`reduction` must be one of 'none', 'sum', 'mean'; got 'batchmean'"
    ):
        crossent.entropy(P, reduction="batchmean")
    with pytest.raises(ValueError, match=r"must be one of 'none', 'mean'; got 'sum'"):
        crossent.perplexity(target_probs=P, reduction="sum")


def test_dim() -> None:
    with pytest.raises(
        ValueError, match=r"`dim` must be an axis of `probs` \(shape \(2, 2\)\); got 2"
    ):
        crossent.entropy(P, dim=2)
    with pytest.raises(TypeError, match=r"`dim` must be an integer axis; got 1.0"):
        crossent.entropy(P, dim=1.0)
    with pytest.raises(ValueError, match=r"`probs` must have at least one axis, the classes"):
        crossent.entropy(0.5)


def test_exactly_one_representation_per_role() -> None:
    with pytest.raises(
        TypeError, match=r"pass exactly one of `pred_probs=`.*; got `pred_probs`, `pred_logits`"
    ):
        crossent.cross_entropy(target_probs=P, pred_probs=P, pred_logits=P)
    with pytest.raises(TypeError, match=r"for the true \(target\) distribution; got none"):
        crossent.cross_entropy(pred_probs=P)
    with pytest.raises(TypeError, match=r"for the distribution; got none"):
        crossent.entropy()
    with pytest.raises(TypeError, match=r"`target_index` needs a model"):
        crossent.perplexity(target_index=[0, 1])


def test_roles_cannot_be_passed_by_position() -> None:
    with pytest.raises(TypeError):
        crossent.cross_entropy(P, P)  # type: ignore[misc]


def test_shapes_must_match() -> None:
    with pytest.raises(
        ValueError,
        match=r"`target_probs` must have the shape of `pred_probs`: \(2, 2\); got \(1, 2\)",
    ):
        crossent.cross_entropy(target_probs=P[:1], pred_probs=P)
    with pytest.raises(
        ValueError,
        match=r"`target_index` must have the shape of `pred_probs` without its class axis 1: "
        r"\(2,\); got \(3,\)",
    ):
        crossent.nll(target_index=[0, 1, 1], pred_probs=P)


def test_class_indices_must_be_integers() -> None:
    with pytest.raises(
        TypeError, match=r"`target_index` must hold integer class indices; got dtype float64"
    ):
        crossent.nll(target_index=[0.0, 1.0], pred_probs=P)
    with pytest.raises(TypeError, match=r"got dtype bool"):
        crossent.nll(target_index=[True, False], pred_probs=P)


def test_non_numeric_input() -> None:
    with pytest.raises(TypeError, match=r"`probs` must be an array of numbers; got dtype <U1"):
        crossent.entropy(["a", "b"])


def test_nan_is_reported_with_its_position_in_the_callers_layout() -> None:
    p = np.full((3, 2), 0.5)
    p[2, 1] = np.nan
    with pytest.raises(
        ValueError, match=r"`probs` must not contain NaN; got nan at position \(2, 1\)"
    ):
        crossent.entropy(p)
    q = np.full((2, 3), 1 / 2)  # classes on axis 0
    q[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"got nan at position \(1, 2\)"):
        crossent.entropy(q, dim=0)


def test_probabilities_above_one() -> None:
    with pytest.raises(
        ValueError,
        match=r"`target_probs` must be probabilities in \[0, 1\]; got 3.0 at position \(1,\); "
        r"if these are unnormalised scores, pass them as `target_logits=`",
    ):
        crossent.cross_entropy(target_probs=[1.0, 3.0], pred_probs=[0.5, 0.5])


def test_log_probs_must_be_normalised() -> None:
    with pytest.raises(
        ValueError,
        match=r"`pred_log_probs` must be normalised.*row \(0,\) sums to 0.5.*`pred_logits=`",
    ):
        crossent.nll(target_index=[0], pred_log_probs=np.log([[0.25, 0.25]]))
    with pytest.raises(ValueError, match=r"`log_probs` must be log-probabilities, ≤ 0; got 2.0"):
        crossent.entropy(log_probs=[2.0, -1.0])


def test_logits_must_not_be_nan_or_plus_inf() -> None:
    with pytest.raises(
        ValueError,
        match=r"`pred_logits` must be real numbers or -inf, not NaN or \+inf; "
        r"got inf at position \(0, 1\)",
    ):
        crossent.nll(target_index=[0], pred_logits=[[0.0, math.inf]])


def test_validate_false_skips_the_value_checks() -> None:
    unnormalised = np.array([[0.5, 0.6]])
    with pytest.raises(ValueError, match="must sum to 1"):
        crossent.entropy(unnormalised)
    assert np.isfinite(crossent.entropy(unnormalised, validate=False)).all()


def test_tolerance_admits_float32_softmax_of_many_classes_stored_as_float64() -> None:
    logits = torch.randn(4, 256_000, generator=torch.Generator().manual_seed(0)) * 4
    probs = torch.softmax(logits, dim=-1).double()  # rows sum to 1 within float32 error
    assert torch.isfinite(crossent.entropy(probs)).all()
    assert (
        sum_tolerance(torch.float64)
        == sum_tolerance(torch.float32)
        == pytest.approx(3.45e-4, rel=1e-2)
    )
    assert sum_tolerance(torch.bfloat16) == 4 * 2**-7


def test_low_precision_probabilities_are_checked_with_their_own_tolerance() -> None:
    p = torch.tensor([0.333, 0.333, 0.334], dtype=torch.bfloat16)  # each rounded to 2^-9
    assert crossent.entropy(p).dtype == torch.float32
    with pytest.raises(ValueError, match=r"within 3.1e-02 for bfloat16"):
        crossent.entropy(torch.tensor([0.3, 0.3, 0.3], dtype=torch.bfloat16))


def test_shape_messages_use_the_callers_layout_when_classes_are_not_last() -> None:
    with pytest.raises(ValueError, match=r"`pred_probs`: \(2, 3, 4\); got \(2, 3, 5\)"):
        crossent.cross_entropy(
            target_probs=np.full((2, 3, 5), 1 / 3), pred_probs=np.full((2, 3, 4), 1 / 3), dim=1
        )
    with pytest.raises(ValueError, match=r"without its class axis 0: \(4,\); got \(2,\)"):
        crossent.nll(target_index=[0, 1], pred_probs=np.full((3, 4), 1 / 3), dim=0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.uint32, np.uint64, np.int32])
def test_class_indices_of_any_integer_dtype(dtype: type) -> None:
    index = np.array([2, 0], dtype=dtype)
    assert crossent.nll(target_index=index, pred_probs=[[0.25, 0.25, 0.5]] * 2).tolist() == [1, 2]


def test_empty_and_scalar_class_indices() -> None:
    assert crossent.nll(target_index=[], pred_probs=np.zeros((0, 3))).shape == (0,)
    assert crossent.nll(target_index=1, pred_probs=[0.5, 0.5]) == 1.0
    with pytest.raises(ValueError, match=r"must be class indices in \[0, 2\); got 5$"):
        crossent.nll(target_index=5, pred_probs=[0.5, 0.5])


def test_arrays_torch_cannot_read_get_a_message_naming_the_argument() -> None:
    with pytest.raises(
        TypeError, match=r"`probs` must hold numbers of 64 bits at most; got dtype float128"
    ):
        crossent.entropy(np.full(2, 0.5, dtype=np.longdouble))
    with pytest.raises(
        TypeError, match=r"`probs` must be an array of real numbers; got dtype torch.complex64"
    ):
        crossent.entropy(torch.tensor([0.5 + 0j, 0.5]))
    with pytest.raises(TypeError, match=r"`pred_logits` must be an array of numbers"):
        crossent.nll(target_index=[0], pred_logits=[[torch.tensor(1.0, requires_grad=True)]])


def test_unaligned_big_endian_and_read_only_arrays_are_read_without_warnings() -> None:
    record = np.zeros(2, dtype=[("flag", "i1"), ("p", ">f8")])  # unaligned, big-endian field
    record["p"] = 0.5
    read_only = np.broadcast_to(np.array([0.5, 0.5]), (3, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert crossent.entropy(record["p"]) == 1.0
        assert crossent.entropy(read_only).tolist() == [1.0, 1.0, 1.0]


def test_values_in_messages_are_shown_at_their_precision() -> None:
    with pytest.raises(ValueError, match=r"got -0.1 at position \(2,\)"):
        crossent.entropy(np.array([0.6, 0.5, -0.1], dtype=np.float32))
