"""Huffman and Shannon codes: optimal, prefix-free, and costing what the measures say."""

from __future__ import annotations

import heapq
import math

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from crossent.coding.huffman import code_cost, huffman_code, questions, shannon_code

distributions = (
    st.lists(st.floats(0.0, 1.0), min_size=1, max_size=30)
    .filter(lambda xs: sum(xs) > 1e-3)
    .map(lambda xs: [x / math.fsum(xs) for x in xs])
)


def optimal_length(probs: list[float]) -> float:
    """Expected length of an optimal code, by the textbook merge (an independent reference)."""
    heap = [p for p in probs if p > 0]
    if len(heap) == 1:
        return 0.0
    heapq.heapify(heap)
    total = 0.0
    while len(heap) > 1:
        merged = heapq.heappop(heap) + heapq.heappop(heap)
        total += merged  # every merge adds one bit to each outcome below it
        heapq.heappush(heap, merged)
    return total


def entropy_bits(probs: list[float]) -> float:
    return -math.fsum(p * math.log2(p) for p in probs if p > 0)


def test_the_articles_example() -> None:
    f = [1 / 2, 1 / 4, 1 / 4]
    assert huffman_code(f) == ["0", "10", "11"] == shannon_code(f)
    cost = code_cost(huffman_code(f), f, f)
    assert cost.expected == cost.entropy == 1.5


@settings(max_examples=200, deadline=None)
@given(distributions)
def test_huffman_is_optimal_prefix_free_and_within_a_bit_of_entropy(f: list[float]) -> None:
    words = huffman_code(f)
    present = [w for w in words if w is not None]
    assert all((w is None) == (p == 0) for w, p in zip(words, f, strict=True))
    assert not any(a != b and b.startswith(a) for a in present for b in present)  # prefix-free
    if len(present) > 1:
        assert math.fsum(2.0 ** -len(w) for w in present) == 1  # a complete code
    cost = code_cost(words, f, f)
    assert cost.expected == pytest.approx(optimal_length(f), abs=1e-9)
    # L < H + 1 strictly; in floats H + 1 rounds to 1 when H is tiny, hence ≤ there
    assert cost.entropy - 1e-9 <= cost.expected <= cost.entropy + 1
    assert cost.expected < cost.entropy + 1 or cost.entropy < 1e-12


@settings(max_examples=200, deadline=None)
@given(distributions.flatmap(lambda f: st.tuples(st.just(f), st.permutations(f))))
@example(
    (
        [0.9999999999999996, 2.220446049250312e-16, 2.220446049250312e-16],
        [2.220446049250312e-16, 0.9999999999999996, 2.220446049250312e-16],
    )
)
def test_shannon_code_for_f_used_on_g_costs_the_cross_entropy(pair: tuple) -> None:
    f, g = pair  # same support (a permutation), so H(g, f) may be finite or +inf
    cost = code_cost(shannon_code(f), f, g)
    assert cost.expected == pytest.approx(cost.entropy + cost.divergence_to_code, abs=1e-9)
    if math.isfinite(cost.cross_entropy_to_model):
        assert cost.cross_entropy_to_model - 1e-9 <= cost.expected
        # < in exact arithmetic, but by as little as ⌈a⌉ − a for a = −log2 f_i just above an
        # integer: f = [1 − 2ε, ε, ε] (ε just under 2^-52) used on g = f permuted is below by
        # 6.5e-16, and H(g, f) in floats is off by 1e-14 (found by hypothesis)
        assert cost.expected <= cost.cross_entropy_to_model + 1 + 1e-9
    else:
        assert cost.expected == math.inf


def test_huffman_of_f_on_g_is_entropy_plus_divergence_to_its_implied_distribution() -> None:
    f, g = [0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]
    words = huffman_code(f)
    cost = code_cost(words, f, g)
    r = [2.0 ** -len(w) for w in words]
    divergence = math.fsum(x * math.log2(x / y) for x, y in zip(g, r, strict=True))
    assert cost.divergence_to_code == pytest.approx(divergence)
    assert cost.expected == pytest.approx(entropy_bits(g) + divergence)
    assert cost.expected == pytest.approx(
        math.fsum(x * len(w) for x, w in zip(g, words, strict=True))
    )


def test_measured_length_of_sampled_outcomes_converges_to_the_expected_length() -> None:
    f, g = [0.5, 0.25, 0.125, 0.125], [0.1, 0.2, 0.3, 0.4]
    cost = code_cost(huffman_code(f), f, g, samples=200_000, seed=1)
    lengths = np.array([1, 2, 3, 3])
    spread = math.sqrt(np.dot(g, (lengths - cost.expected) ** 2) / 200_000)
    assert cost.measured is not None
    assert abs(cost.measured - cost.expected) < 5 * spread


def test_an_outcome_the_code_cannot_say_costs_infinite_bits() -> None:
    f, g = [0.5, 0.5, 0.0], [0.2, 0.2, 0.6]
    cost = code_cost(huffman_code(f), f, g, samples=100)
    assert cost.expected == cost.measured == cost.cross_entropy_to_model == math.inf


def test_a_certain_outcome_needs_no_question() -> None:
    assert huffman_code([0.0, 1.0]) == [None, ""]
    cost = code_cost(huffman_code([0.0, 1.0]), [0.0, 1.0], [0.0, 1.0], samples=10)
    assert cost.expected == cost.measured == cost.entropy == 0


@settings(max_examples=100, deadline=None)
@given(distributions)
def test_the_answers_to_the_questions_spell_the_code_word(f: list[float]) -> None:
    names = [f"x{i}" for i in range(len(f))]
    words = huffman_code(f)
    for word, name, asked in zip(words, names, questions(words, names), strict=True):
        assert "".join("1" if answer else "0" for _, answer in asked) == (word or "")
        if asked:  # the last yes names the outcome itself, or it is the only one left
            last, answer = asked[-1]
            assert name in last or not answer


def test_bad_inputs() -> None:
    with pytest.raises(
        ValueError, match=r"`probs` must be probabilities in \[0, 1\]; got 1.5 at position 0"
    ):
        huffman_code([1.5, -0.5])
    with pytest.raises(ValueError, match="one entry per outcome; got 2, 2 and 3"):
        code_cost(["0", "1"], [0.5, 0.5], [0.2, 0.3, 0.5])
    with pytest.raises(
        ValueError, match=r"^`names` must give one name per code word; got 1 and 2$"
    ):
        questions(["0", "1"], ["a"])


def test_the_questions_word_for_word() -> None:
    # after the answers s, "is it one of those whose word starts with s + '1'?"
    asked = questions(["0", "10", "110", "111", None], ["a", "b", "c", "d", "e"])
    assert asked == [
        [("one of {b, c, d}?", False)],
        [("one of {b, c, d}?", True), ("one of {c, d}?", False)],
        [("one of {b, c, d}?", True), ("one of {c, d}?", True), ("d?", False)],
        [("one of {b, c, d}?", True), ("one of {c, d}?", True), ("d?", True)],
        [],  # no code word: never asked about
    ]


def test_sampling_is_seeded_and_says_how_many() -> None:
    f, g = [0.5, 0.25, 0.25], [0.25, 0.25, 0.5]
    words = huffman_code(f)
    first = code_cost(words, f, g, samples=500)
    assert first.samples == 500
    assert (
        first == code_cost(words, f, g, samples=500) == code_cost(words, f, g, samples=500, seed=0)
    )
    assert first.measured != code_cost(words, f, g, samples=500, seed=1).measured


def test_sampling_takes_the_outcomes_as_normalised() -> None:
    # a g that sums to 1 within the measures' tolerance (not within NumPy's 1e-8) is sampled
    # as g / Σ g
    f, g = [0.5, 0.25, 0.25], [0.25, 0.25, 0.5 + 1e-5]
    cost = code_cost(huffman_code(f), f, g, samples=2_000, seed=3)
    assert cost.measured is not None
    assert abs(cost.measured - cost.expected) < 0.1
