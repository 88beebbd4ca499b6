"""Sliding windows over a token sequence: which tokens each window reads and which it scores.

A causal LM reads at most C tokens (its context length). A sequence y_0 … y_{n−1} longer than
that is scored as the transformers perplexity guide does, in windows that advance by a stride
s < C: the first window reads y_0 … y_{C−1} and scores y_1 … y_{C−1}; each next one ends s
tokens later, reads the C tokens before its end and scores only its last s, so that every
token after the first window is predicted from at least C − s tokens before it. Each token
y_i (i ≥ 1) is scored exactly once, from y_begin … y_{i−1} of its window. Where n ≤ C there
is one window, the whole sequence.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """Tokens ``begin`` … ``end − 1`` are read; ``first`` … ``end − 1`` are scored."""

    begin: int
    first: int
    end: int


def check_window(context: int, stride: int) -> None:
    """A context of ≥ 2 tokens and a stride in [1, context − 1]."""
    if context < 2:
        raise ValueError(f"`--context` must be at least 2 tokens; got {context}")
    if not 1 <= stride < context:
        raise ValueError(
            f"`--stride` must be at least 1 and less than the context ({context}); got {stride}"
        )


def windows(n: int, context: int, stride: int) -> list[Window]:
    """The windows over a sequence of ``n`` tokens (scoring tokens 1 … n − 1).

    >>> windows(10, 4, 2)
    [Window(begin=0, first=1, end=4), Window(begin=2, first=4, end=6), \
Window(begin=4, first=6, end=8), Window(begin=6, first=8, end=10)]
    >>> windows(3, 8, 4)
    [Window(begin=0, first=1, end=3)]
    """
    check_window(context, stride)
    if n < 2:
        return []
    end = min(context, n)
    found = [Window(0, 1, end)]
    while end < n:
        first, end = end, min(end + stride, n)
        found.append(Window(end - min(context, end), first, end))
    return found
