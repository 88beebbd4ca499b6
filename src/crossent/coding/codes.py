"""Prefix codes from code lengths: the yes/no questions of docs/theory.md §3 as real code words.

A code word of length l is l yes/no answers. The Shannon code for a distribution q gives the
outcome x the length l(x) = ⌈log2 1/q(x)⌉; then Σ 2^−l(x) ≤ 1 (Kraft), so a prefix code with
these lengths exists, and its expected length under the true distribution p obeys
H(p, q) ≤ L < H(p, q) + 1 bits (Cover & Thomas, Thm 5.4.3). For dyadic q (every q(x) a power
of 1/2) the lengths are exactly log2 1/q(x): the article's q = (1/2, 1/4, 1/4) gets '0', '10',
'11' and L = H(q) = 1.5 bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction


def shannon_lengths(probs: Sequence[float]) -> list[int | None]:
    """Code lengths ⌈log2 1/q(x)⌉ in bits; ``None`` for outcomes of probability 0 (no code word).

    Args:
        probs: q, one probability per outcome.

    q is ``probs`` divided by its sum, in exact rational arithmetic: floats that sum to
    1 + 1e-20 would otherwise get lengths that break Kraft's inequality (no prefix code has
    them), and a q(x) that rounds to 1.0 beside a tiny positive one would get length 0.

    >>> shannon_lengths([1 / 2, 1 / 4, 1 / 4])
    [1, 2, 2]
    >>> shannon_lengths([1.0, 1e-300])  # q(x) = 1 / (1 + 1e-300) < 1 needs one question
    [1, 997]
    """
    for x, q in enumerate(probs):
        if not 0 <= q <= 1:
            raise ValueError(f"`probs` must be probabilities in [0, 1]; got {q!r} at position {x}")
    total = sum(Fraction(q) for q in probs)
    if total == 0:
        raise ValueError("`probs` must have a positive entry; got all zeros")
    return [_shannon_length(Fraction(q) / total) if q > 0 else None for q in probs]


def _shannon_length(share: Fraction) -> int:
    """The least l ≥ 0 with 2^−l ≤ share = a / b, exactly, in integers: from the guess
    bits(b) − bits(a) − 1, which is below it, up one step at a time while a · 2^l < b. (A
    float guess from log2 would fail where share is below float's range: 5e-324 of 3.)"""
    a, b = share.numerator, share.denominator
    length = max(0, b.bit_length() - a.bit_length() - 1)
    while a << length < b:
        length += 1
    return length


def canonical_code(lengths: Sequence[int | None]) -> list[str | None]:
    """The canonical prefix code with the given lengths (shorter words first, then by outcome).

    Code words are bit strings; an outcome with length ``None`` gets none.

    Args:
        lengths: one length in bits per outcome (or None), satisfying Kraft's inequality
            Σ 2^−l ≤ 1, as every prefix code's lengths do.

    >>> canonical_code([1, 2, 2])
    ['0', '10', '11']
    """
    kraft = sum(2.0**-length for length in lengths if length is not None)
    if kraft > 1:
        raise ValueError(
            f"`lengths` must satisfy Kraft's inequality Σ 2^-l ≤ 1 to form a prefix code; "
            f"got Σ 2^-l = {kraft:g}"
        )
    order = sorted((length, x) for x, length in enumerate(lengths) if length is not None)
    words: list[str | None] = [None] * len(lengths)
    value, previous = 0, 0
    for length, x in order:
        value <<= length - previous  # next word: one more than the last, padded to this length
        words[x] = format(value, f"0{length}b") if length else ""
        value, previous = value + 1, length
    return words


def expected_length(lengths: Sequence[int | None], probs: Sequence[float]) -> float:
    """Expected code length Σ p(x) l(x) in bits under the distribution ``probs`` (p).

    +inf when p gives positive probability to an outcome without a code word.

    Args:
        lengths: one code length in bits per outcome, or None for no code word.
        probs: p, one probability per outcome.

    >>> expected_length([1, 2, 2], [1 / 8, 1 / 8, 3 / 4])
    1.875
    """
    if len(lengths) != len(probs):
        raise ValueError(
            f"`lengths` and `probs` must have one entry per outcome; "
            f"got {len(lengths)} and {len(probs)}"
        )
    total = 0.0
    for length, p in zip(lengths, probs, strict=True):
        if p > 0:
            total += math.inf if length is None else p * length
    return total
