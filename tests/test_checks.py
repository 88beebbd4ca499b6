"""Bad input: each error names the argument, the rule and the value (and where it is)."""

from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch

import crossent
from crossent import _checks
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


# Issue 22: the whole message of each rule, at and just beyond its bounds. float16 makes the
# bounds exact: its sum_tolerance is 2^-8, so an entry may reach 1 + 2^-8 (the next float16 above
# is 1 + 2^-8 + 2^-10) and a row may sum to 1 + 2^-8; a log-probability may reach log1p(2^-8).
H16 = 2**-8
LOG_HALF = math.log(0.5)
SCORES = "if these are unnormalised scores, pass them as `logits=`"


def exactly(message: str) -> str:
    """A pattern that matches ``message`` and nothing more."""
    return "^" + re.escape(message) + "$"


def half(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float16)


def nan_at(shape: tuple[int, ...], position: tuple[int, ...], fill: float) -> np.ndarray:
    values = np.full(shape, fill)
    values[position] = np.nan
    return values


def test_float16_tolerance_is_two_to_the_minus_eight() -> None:
    assert sum_tolerance(torch.float16) == H16


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        # probabilities: NaN, entries outside [0, 1 + tolerance], rows off 1, and the hints
        (
            {"probs": nan_at((2, 3), (1, 2), 1 / 2), "dim": 0},  # NaN in the caller's layout
            "`probs` must not contain NaN; got nan at position (1, 2)",
        ),
        (
            {"probs": half(1 + H16 + 2**-10, 0.0)},  # just beyond 1 + tolerance
            f"`probs` must be probabilities in [0, 1]; got 1.005 at position (0,); {SCORES}",
        ),
        (
            {"probs": half(1 + H16, 1.5)},  # 1 + tolerance itself is no bad entry
            f"`probs` must be probabilities in [0, 1]; got 1.5 at position (1,); {SCORES}",
        ),
        (
            {"probs": [0.0, 2.0]},  # 0 itself is no bad entry
            f"`probs` must be probabilities in [0, 1]; got 2.0 at position (1,); {SCORES}",
        ),
        (
            {"probs": [[0.5, 1.5], [0.5, -0.5]], "dim": 0},
            f"`probs` must be probabilities in [0, 1]; got 1.5 at position (0, 1); {SCORES}",
        ),
        (
            {"probs": [-1.0, -2.0]},  # ≤ 0 but exp sums to 0.5: not log-probabilities either
            f"`probs` must be probabilities in [0, 1]; got -1.0 at position (0,); {SCORES}",
        ),
        (
            {"probs": [2**-14, -math.inf]},  # exp sums to 1 within tolerance, but 2^-14 > 0
            f"`probs` must be probabilities in [0, 1]; got -inf at position (1,); {SCORES}",
        ),
        (
            {"probs": [0.0, -math.inf]},  # log-probabilities of [1, 0]
            "`probs` must be probabilities in [0, 1]; got -inf at position (1,); "
            "these look like log-probabilities: pass them as `log_probs=`",
        ),
        (
            {"probs": half(0.5, 0.5 + H16 + 2**-10)},  # sums just beyond 1 + tolerance
            "`probs` must sum to 1 (within 3.9e-03 for float16); it sums to 1.00488",
        ),
        (
            {"probs": [[0.5, 0.5], [0.5, 0.6]]},
            "`probs` must sum to 1 (within 3.5e-04 for float64); row (1,) sums to 1.1",
        ),
        # log-probabilities: NaN, entries above log1p(tolerance), rows off 1, and the hints
        (
            {"log_probs": nan_at((2, 3), (1, 2), LOG_HALF), "dim": 0},
            "`log_probs` must not contain NaN; got nan at position (1, 2)",
        ),
        (
            {"log_probs": [0.5]},  # one element: checked all the same
            f"`log_probs` must be log-probabilities, ≤ 0; got 0.5 at position (0,); {SCORES}",
        ),
        (
            {"log_probs": half(H16)},  # 2^-8 > log1p(2^-8)
            f"`log_probs` must be log-probabilities, ≤ 0; got 0.003906 at position (0,); {SCORES}",
        ),
        (
            {
                "log_probs": [math.log1p(sum_tolerance(torch.float64)), 2.0]
            },  # the bound is no bad entry
            f"`log_probs` must be log-probabilities, ≤ 0; got 2.0 at position (1,); {SCORES}",
        ),
        (
            {"log_probs": [[-1.0, 2.0, -1.0], [-1.0, -1.0, -1.0]], "dim": 0},
            f"`log_probs` must be log-probabilities, ≤ 0; got 2.0 at position (0, 1); {SCORES}",
        ),
        (
            {"log_probs": [-0.25, 0.5, 0.75]},  # sums to 1, but -0.25 is no probability
            f"`log_probs` must be log-probabilities, ≤ 0; got 0.5 at position (1,); {SCORES}",
        ),
        (
            {"log_probs": [0.0, 0.25, 0.75]},
            "`log_probs` must be log-probabilities, ≤ 0; got 0.25 at position (1,); "
            "these look like probabilities: pass them as `probs=`",
        ),
        (
            {"log_probs": [[1.0, 0.0], [0.5, 0.5]]},  # 1 is a probability too
            "`log_probs` must be log-probabilities, ≤ 0; got 1.0 at position (0, 0); "
            "these look like probabilities: pass them as `probs=`",
        ),
        (
            {"log_probs": [math.log(0.25), math.log(0.25)]},
            "`log_probs` must be normalised: exp of it must sum to 1 (within 3.5e-04); it sums "
            "to 0.5. Unnormalised scores are logits: pass them as `logits=`",
        ),
        # logits: NaN, +inf, rows without a finite value
        (
            {"logits": [math.nan]},
            "`logits` must be real numbers or -inf, not NaN or +inf; got nan at position (0,)",
        ),
        (
            {"logits": [[0.0, -math.inf], [-math.inf, math.inf]]},
            "`logits` must be real numbers or -inf, not NaN or +inf; got inf at position (1, 1)",
        ),
        (
            {"logits": [-math.inf]},
            "`logits`: it is -inf everywhere, which gives no distribution (at least one class "
            "needs a finite logit)",
        ),
        (
            {"logits": [[0.0, 1.0], [-math.inf, -math.inf]]},
            "`logits`: row (1,) is -inf everywhere, which gives no distribution (at least one "
            "class needs a finite logit)",
        ),
    ],
)
def test_whole_messages_at_and_beyond_the_bounds(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=exactly(message)):
        crossent.entropy(**arguments)


@pytest.mark.parametrize(
    "arguments",
    [
        {"probs": half(1 + H16, 0.0)},  # an entry of 1 + tolerance; the row sums to 1 + tolerance
        {"probs": half(0.5, 0.5 + H16)},  # a row summing to 1 + tolerance
        {"probs": torch.tensor([0.5 + 2**-5, 0.5], dtype=torch.bfloat16)},  # bfloat16: 2^-5
        {"log_probs": half(math.log1p(H16))},  # log1p(tolerance), in float16
        {"log_probs": [LOG_HALF, LOG_HALF]},  # one distribution: no batch axis to sum over
        {"log_probs": np.full((2, 3, 2), LOG_HALF)},
        {"probs": np.zeros((0, 2))},  # no distributions: nothing to check
        {"log_probs": np.zeros((0, 2))},
        {"logits": np.zeros((0, 2))},
        {"logits": [0.0]},  # one class: probability 1
    ],
)
def test_values_at_the_bounds_are_accepted(arguments: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.all(torch.as_tensor(crossent.entropy(**arguments)).isfinite())


def test_command_line_options_get_no_keyword_hint() -> None:
    with pytest.raises(
        ValueError, match=exactly("`--p` must be probabilities in [0, 1]; got 2.0 at position (0,)")
    ):
        _checks.check_probs("--p", torch.tensor([2.0, -1.0], dtype=torch.float64), dim=0)


@pytest.mark.parametrize(
    ("values", "shown"),
    [([0.6, 0.7, -0.3], "-0.3"), ([0.5, 0.6234567, -0.1234567], "-0.1234567")],
)
def test_float32_values_are_shown_with_seven_digits(values: list[float], shown: str) -> None:
    message = f"`probs` must be probabilities in [0, 1]; got {shown} at position (2,); {SCORES}"
    with pytest.raises(ValueError, match=exactly(message)):
        crossent.entropy(np.array(values, dtype=np.float32))


PROBS_AS_LOGITS = (
    "every row of `{name}` is non-negative and sums to 1: these look like probabilities, which "
    "softmax would distort; pass them as `{sibling}=`"
)


@pytest.mark.parametrize(
    "logits",
    [[0.25, 0.75], [[0.0, 0.25, 0.75]], [[1.0, 0.0], [0.5, 0.5]], np.full((2, 3, 2), 0.5)],
)
def test_probabilities_passed_as_logits_get_a_warning(logits: object) -> None:
    message = PROBS_AS_LOGITS.format(name="logits", sibling="probs")
    with pytest.warns(UserWarning, match=exactly(message)) as caught:
        crossent.entropy(logits=logits)
    assert [(w.category, str(w.message)) for w in caught] == [(UserWarning, message)]
    message = PROBS_AS_LOGITS.format(name="pred_logits", sibling="pred_probs")
    with pytest.warns(UserWarning, match=exactly(message)):
        crossent.nll(target_index=[1], pred_logits=[[0.25, 0.75]])


@pytest.mark.parametrize(
    "logits",
    [
        [[0.0, 1.0], [1.0, 0.0]],  # only 0s and 1s: plausible logits
        [0.25, 0.25],  # fractional, but not summing to 1
        [-0.25, 0.5, 0.75],  # sums to 1, but negative
        [[1 + 1e-4, 0.0], [0.5, 0.5]],  # sums to 1 within tolerance, but 1 + 1e-4 > 1
        [2.0, 3.0],
        [0.5],  # one class
    ],
)
def test_plausible_logits_get_no_warning(logits: object) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        crossent.entropy(logits=logits)


@pytest.mark.parametrize(
    ("index", "ignore_index", "message"),
    [
        ([0, -100, 1], -100, None),
        ([-100, -100], -100, None),
        (
            [0, -100, 5],
            -100,
            "`target` must be class indices in [0, 2) or ignore_index -100; got 5 at position (2,)",
        ),
        (
            [[0, 1], [-1, -100]],
            -100,
            "`target` must be class indices in [0, 2) or ignore_index -100; got -1 at position "
            "(1, 0)",
        ),
        ([0, -100], None, "`target` must be class indices in [0, 2); got -100 at position (1,)"),
        ([2], None, "`target` must be class indices in [0, 2); got 2 at position (0,)"),
        (2, 2, None),
    ],
)
def test_index_range_with_ignore_index(
    index: object, ignore_index: int | None, message: str | None
) -> None:
    tensor = torch.tensor(index)
    if message is None:
        _checks.check_index_range("target", tensor, 2, ignore_index)
    else:
        with pytest.raises(ValueError, match=exactly(message)):
            _checks.check_index_range("target", tensor, 2, ignore_index)


@pytest.mark.parametrize(
    ("index", "pred", "dtype"),
    [
        ([1.0], [[0.5, 0.5]], "float64"),
        (1.0, [0.5, 0.5], "float64"),
        ([True], [[0.5, 0.5]], "bool"),
    ],
)
def test_one_non_integer_class_index_is_refused(index: object, pred: object, dtype: str) -> None:
    message = (
        f"`target_index` must hold integer class indices; got dtype {dtype} "
        "(convert with .astype(int) / .long() if the values are whole numbers)"
    )
    with pytest.raises(TypeError, match=exactly(message)):
        crossent.nll(target_index=index, pred_probs=pred)


def test_base_between_zero_and_one_is_accepted() -> None:
    # a finite positive number other than 1: base 1/2 counts in negative bits
    assert _checks.check_base(0.5) == 0.5
    assert crossent.entropy([0.5, 0.5], base=0.5) == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda: crossent.cross_entropy(pred_probs=P),
            "pass exactly one of `target_probs=`, `target_log_probs=`, `target_logits=`, "
            "`target_index=` for the true (target) distribution; got none",
        ),
        (
            lambda: crossent.entropy(probs=P, logits=P),
            "pass exactly one of `probs=`, `log_probs=`, `logits=` for the distribution; "
            "got `probs`, `logits`",
        ),
        (
            lambda: crossent.kl_divergence(target_probs=P, pred_log_probs=P, pred_logits=P),
            "pass exactly one of `pred_probs=`, `pred_log_probs=`, `pred_logits=` for the model "
            "(pred) distribution; got `pred_log_probs`, `pred_logits`",
        ),
    ],
)
def test_choose_one_messages(call: object, message: str) -> None:
    with pytest.raises(TypeError, match=exactly(message)):
        call()  # type: ignore[operator]


@pytest.mark.parametrize(
    "measure",
    [
        lambda: crossent.entropy(logits=[0.25, 0.75]),
        lambda: crossent.cross_entropy(target_logits=[0.25, 0.75], pred_probs=[0.5, 0.5]),
        lambda: crossent.kl_divergence(target_probs=[0.5, 0.5], pred_logits=[0.25, 0.75]),
    ],
)
def test_probabilities_as_logits_warn_at_the_callers_line(measure: object) -> None:
    # (left out of mutation runs: under mutmut the caller's frame is its trampoline's)
    with pytest.warns(UserWarning, match="look like probabilities") as caught:
        measure()  # type: ignore[operator]
    assert (caught[0].filename, caught[0].lineno) == (__file__, measure.__code__.co_firstlineno)
