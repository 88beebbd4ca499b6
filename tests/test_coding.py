"""Shannon codes: lengths, prefix-free words, and expected lengths against H and H(p, q)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import crossent
from crossent.coding import canonical_code, expected_length, shannon_lengths
from tests.conftest import batches, random_probs


def test_the_articles_example() -> None:
    lengths = shannon_lengths([1 / 2, 1 / 4, 1 / 4])
    assert lengths == [1, 2, 2]
    assert canonical_code(lengths) == ["0", "10", "11"]
    assert expected_length(lengths, [1 / 2, 1 / 4, 1 / 4]) == crossent.entropy(
        [1 / 2, 1 / 4, 1 / 4]
    )


@given(batches(max_rows=1, max_classes=12))
def test_shannon_code_is_prefix_free_and_within_one_bit_of_cross_entropy(batch: tuple) -> None:
    rng, shape = batch
    q = random_probs(rng, shape)[0].tolist()
    weights = random_probs(rng, shape, zero_fraction=0.0)[0]
    weights = [w if qi > 0 else 0.0 for w, qi in zip(weights, q, strict=True)]  # where q codes
    p = [w / sum(weights) for w in weights]
    lengths = shannon_lengths(q)
    words = [w for w in canonical_code(lengths) if w is not None]
    for a in words:
        assert not any(b != a and b.startswith(a) for b in words)  # prefix-free
    for word, length in zip(canonical_code(lengths), lengths, strict=True):
        assert (word is None) == (length is None)
        assert word is None or len(word) == length
    h_pq = float(crossent.cross_entropy(target_probs=p, pred_probs=q))
    average = expected_length(lengths, p)
    assert h_pq - 1e-12 <= average < h_pq + 1  # Cover & Thomas, Thm 5.4.3


def test_an_outcome_without_a_code_word_costs_infinitely_many_bits() -> None:
    lengths = shannon_lengths([1.0, 0.0])
    assert lengths == [0, None]
    assert canonical_code(lengths) == ["", None]
    assert expected_length(lengths, [0.5, 0.5]) == math.inf


def test_errors() -> None:
    with pytest.raises(ValueError, match=r"Kraft's inequality .* got Σ 2\^-l = 1.25"):
        canonical_code([1, 1, 2])
    with pytest.raises(ValueError, match=r"`probs` must be .* \[0, 1\]; got 1.5 at position 0"):
        shannon_lengths([1.5, -0.5])
    with pytest.raises(ValueError, match="one entry per outcome; got 2 and 3"):
        expected_length([1, 1], [0.5, 0.25, 0.25])
    with pytest.raises(ValueError, match=r"^`probs` must have a positive entry; got all zeros$"):
        shannon_lengths([0.0, 0.0])


def test_code_words_are_sampled_at_the_rate_of_the_cross_entropy() -> None:
    """Encode 20,000 outcomes of p with q's code: bits per outcome → the code's expected length."""
    rng = np.random.default_rng(0)
    p, q = [1 / 8, 1 / 8, 3 / 4], [1 / 2, 1 / 4, 1 / 4]
    words = canonical_code(shannon_lengths(q))
    outcomes = rng.choice(3, size=20_000, p=p)
    message = "".join(words[x] for x in outcomes)
    assert len(message) / len(outcomes) == pytest.approx(1.875, abs=0.02)  # H(p, q) in bits


def test_shannon_lengths_obey_kraft_when_floats_sum_above_one() -> None:
    """Regression: [1.0, 4e-246] got lengths [0, 816], which no prefix code has."""
    from fractions import Fraction

    for probs in ([1.0, 4.33e-246], [0.5, 0.5, 1e-20], [1 / 3] * 3):
        lengths = shannon_lengths(probs)
        assert sum(Fraction(1, 2**n) for n in lengths if n is not None) <= 1
        words = canonical_code(lengths)
        assert not any(a != b and b.startswith(a) for a in words for b in words)
    assert shannon_lengths([1.0, 4.33e-246])[0] == 1
    assert shannon_lengths([0.5, 0.5, 1e-20])[:2] == [2, 2]


@given(
    st.lists(
        st.floats(0.0, 1.0, allow_subnormal=True) | st.sampled_from([5e-324, 1e-310, 1.0]),
        min_size=1,
        max_size=8,
    ).filter(any)
)
def test_each_length_is_the_least_l_with_two_to_minus_l_at_most_q(probs: list[float]) -> None:
    # checked in exact rationals, down to float's smallest subnormal beside several outcomes
    # (a float log2 of q / Σ q underflowed there: 5e-324 of 3 was a math domain error)
    total = sum(Fraction(q) for q in probs)
    for q, length in zip(probs, shannon_lengths(probs), strict=True):
        if q == 0:
            assert length is None
            continue
        share = Fraction(q) / total
        assert Fraction(1, 2**length) <= share
        assert length == 0 or Fraction(1, 2 ** (length - 1)) > share


def test_a_subnormal_probability_among_several_outcomes() -> None:
    assert shannon_lengths([5e-324, 1.0, 1.0, 1.0]) == [1076, 2, 2, 2]
