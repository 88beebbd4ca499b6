"""Codes of a distribution, their lengths, and the twenty-questions game (docs/theory.md §3–§4).

A code word of length l(x) is l(x) yes/no answers. For a code used on outcomes that follow g,
with r(x) = 2^−l(x), the expected length is exactly

    L_g = Σ_x g(x) l(x) = H(g) + D(g ‖ r)   bits,

so a code is as good as its implied distribution r is close to g. Two codes of a distribution f:

- the Huffman code (optimal): H(f) ≤ L_f < H(f) + 1; used on another g it has no such bound,
  only the identity above;
- the Shannon code, l(x) = ⌈log2 1/f(x)⌉: used on g, H(g, f) ≤ L_g < H(g, f) + 1 (Cover &
  Thomas, Thm 5.4.3): the cross entropy is the cost of the code built for the wrong f.

Huffman codes are built by bitarray's C implementation (``canonical_huffman``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from bitarray import bitarray
from bitarray.util import canonical_huffman

from crossent.coding.codes import canonical_code, expected_length, shannon_lengths
from crossent.measures import cross_entropy, entropy, kl_divergence

Words = list[str | None]


def huffman_code(probs: Sequence[float]) -> Words:
    """An optimal prefix code for ``probs``: one bit string per outcome, ``None`` if q(x) = 0.

    A certain outcome needs no question: its code word is empty. Its expected length L
    (bits per outcome) is H(q) ≤ L < H(q) + 1.

    Args:
        probs: q, one probability per outcome (normalised if it does not sum to 1).

    >>> huffman_code([1 / 2, 1 / 4, 1 / 4])
    ['0', '10', '11']
    """
    lengths = shannon_lengths(probs)  # checks the probabilities
    possible = {x: p for x, p in enumerate(probs) if p > 0}
    if len(possible) <= 1:
        return ["" if length is not None else None for length in lengths]
    words, _, _ = canonical_huffman(possible)
    return [words[x].to01() if x in words else None for x in range(len(probs))]


def shannon_code(probs: Sequence[float]) -> Words:
    """The canonical prefix code with lengths ⌈log2 1/f(x)⌉ bits (Shannon's code).

    Used on outcomes of g its expected length L is H(g, f) ≤ L < H(g, f) + 1.

    Args:
        probs: f, one probability per outcome; ``None`` for an outcome with f(x) = 0.

    >>> shannon_code([0.4, 0.4, 0.2])
    ['00', '01', '100']
    """
    return canonical_code(shannon_lengths(probs))


def lengths_of(words: Words) -> list[int | None]:
    return [None if word is None else len(word) for word in words]


@dataclass(frozen=True)
class CodeCost:
    """The cost of a code in bits per outcome, with outcomes following g.

    Exactly, L_g = H(g) + D(g ‖ r) with r(x) = 2^−l(x), the distribution the code's lengths
    imply; for a code built for f this is at least H(g, f) − 1 (Shannon code) and need not be
    within one bit of it (Huffman code).

    Attributes:
        expected: L_g = Σ g(x) l(x), the expected code length, bits per outcome.
        entropy: H(g), the length of g's own ideal code.
        divergence_to_code: D(g ‖ r), r = 2^−l: the extra bits over H(g).
        cross_entropy_to_model: H(g, f), f the distribution the code was built for.
        measured: the mean length of sampled outcomes of g really encoded, or None.
        samples: how many outcomes were sampled (0: none).

    >>> cost = code_cost(["0", "10", "11"], [1 / 2, 1 / 4, 1 / 4], [1 / 8, 1 / 8, 3 / 4])
    >>> cost.expected, cost.cross_entropy_to_model      # a dyadic f: L = H(g, f)
    (1.875, 1.875)
    """

    expected: float  # L_g = Σ g(x) l(x)
    entropy: float  # H(g)
    divergence_to_code: float  # D(g ‖ r), r = 2^−l
    cross_entropy_to_model: float  # H(g, f), f the distribution the code was built for
    measured: float | None  # mean length of really encoded samples of g, if any
    samples: int


def code_cost(
    words: Words,
    built_for: Sequence[float],
    used_on: Sequence[float],
    *,
    samples: int = 0,
    seed: int = 0,
) -> CodeCost:
    """Exact and measured cost of a code built for f, used on outcomes that follow g.

    With ``samples`` > 0, that many outcomes are drawn from g, encoded into one bit string,
    decoded back (checked), and the bits counted.

    Args:
        words: one code word (a string of '0' and '1') per outcome, or None for an outcome
            without one; e.g. :func:`huffman_code` of f.
        built_for: f, the distribution the code was built for (the model).
        used_on: g, the distribution outcomes really follow (the truth).
        samples: outcomes to draw from g and really encode; 0 for the exact figures only.
        seed: the seed of the draw.

    Returns:
        A :class:`CodeCost`, in bits per outcome.

    >>> f, g = [1 / 2, 1 / 4, 1 / 4], [1 / 8, 1 / 8, 3 / 4]
    >>> cost = code_cost(huffman_code(f), f, g, samples=10_000)
    >>> round(cost.entropy, 4), round(cost.divergence_to_code, 4), cost.expected
    (1.0613, 0.8137, 1.875)
    >>> abs(cost.measured - cost.expected) < 0.05        # 10,000 outcomes really encoded
    True
    """
    lengths = lengths_of(words)
    if len(words) != len(used_on) or len(words) != len(built_for):
        raise ValueError(
            f"the code, f and g must have one entry per outcome; got {len(words)}, "
            f"{len(built_for)} and {len(used_on)}"
        )
    # log r = −l · ln 2, taken as a log so that r = 2^−1075 does not underflow to 0
    log_implied = [-math.inf if length is None else -length * math.log(2) for length in lengths]
    return CodeCost(
        expected=expected_length(lengths, used_on),
        entropy=float(entropy(used_on)),
        divergence_to_code=float(
            kl_divergence(target_probs=used_on, pred_log_probs=log_implied, validate=False)
        ),
        cross_entropy_to_model=float(cross_entropy(target_probs=used_on, pred_probs=built_for)),
        measured=_measured_length(words, used_on, samples, seed) if samples else None,
        samples=samples,
    )


def _measured_length(words: Words, probs: Sequence[float], samples: int, seed: int) -> float:
    """Draw outcomes from ``probs``, encode them with ``words``, decode; bits per outcome."""
    outcomes = np.random.default_rng(seed).choice(len(probs), size=samples, p=_normalised(probs))
    missing = [int(x) for x in np.unique(outcomes) if words[x] is None]
    if missing:
        return math.inf  # an outcome the code cannot say: no finite number of bits
    if all(word == "" for word in words if word is not None):
        return 0.0
    code = {x: bitarray(word) for x, word in enumerate(words) if word is not None}
    stream = bitarray()
    stream.encode(code, outcomes.tolist())
    decoded = stream.decode(code)
    if list(decoded) != outcomes.tolist():
        raise RuntimeError("the code did not decode to the outcomes: please report a bug")
    return len(stream) / samples


def _normalised(probs: Sequence[float]) -> np.ndarray:
    values = np.asarray(probs, dtype=np.float64)
    shares: np.ndarray = values / values.sum()
    return shares


def questions(words: Words, names: Sequence[str]) -> list[list[tuple[str, bool]]]:
    """The yes/no questions each outcome's code word answers, in order.

    After the answers s so far, the question is "is it one of the outcomes whose code word
    starts with s + '1'?": bit 1 is yes, bit 0 is no. An outcome without a code word (q = 0)
    is never asked about and gets no questions.

    Args:
        words: one code word per outcome (None for none), e.g. :func:`huffman_code`'s.
        names: one name per outcome, used in the questions.

    Returns:
        Per outcome, its questions in order, each with the answer (True: yes, bit 1).

    >>> [[f"{q} {'yes' if a else 'no'}" for q, a in asked]
    ...  for asked in questions(['0', '10', '11'], ['a', 'b', 'c'])][2]
    ['one of {b, c}? yes', 'c? yes']
    """
    if len(names) != len(words):
        raise ValueError(
            f"`names` must give one name per code word; got {len(names)} and {len(words)}"
        )
    asked: list[list[tuple[str, bool]]] = []
    for word in words:
        steps: list[tuple[str, bool]] = []
        for depth, bit in enumerate(word or ""):
            prefix = (word or "")[:depth] + "1"
            group = [n for n, w in zip(names, words, strict=True) if w and w.startswith(prefix)]
            question = f"{group[0]}?" if len(group) == 1 else f"one of {{{', '.join(group)}}}?"
            steps.append((question, bit == "1"))
        asked.append(steps)
    return asked
