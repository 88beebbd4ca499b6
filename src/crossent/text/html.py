"""The surprisal view: a text as HTML, each piece coloured by the bits its tokens cost.

A piece is the characters of one token, or of several where tokens share characters (a
multi-byte character split between byte tokens); its colour goes from white (0 bits) to red
(:data:`RED_BITS` bits or more), and hovering shows its bits. The page is one file with no
outside resources.
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from crossent.text.score import TextScore

GENERATOR = "crossent text score"
RED_BITS = 12.0


def pieces(spans: np.ndarray, bits: np.ndarray) -> list[tuple[int, int, float]]:
    """(start, end, bits) of the pieces of tokens with character ``spans`` (n, 2), in order:
    tokens whose spans overlap the piece before are merged into it.

    >>> pieces(np.array([[0, 1], [0, 1], [1, 3]]), np.array([1.0, 2.0, 0.5]))
    [(0, 1, 3.0), (1, 3, 0.5)]
    """
    found: list[tuple[int, int, float]] = []
    for (start, end), cost in zip(spans.tolist(), bits.tolist(), strict=True):
        if found and start < found[-1][1]:
            first, last, total = found[-1]
            found[-1] = (first, max(last, end), total + cost)
        else:
            found.append((start, end, cost))
    return found


def render(score: TextScore, spans: np.ndarray) -> str:
    """The page of ``score``, its tokens at character ``spans``."""
    text = score.text.text
    body, at = [], 0
    for start, end, bits in pieces(spans, score.token_bits):
        body.append(html.escape(text[at:start]))  # characters no token covers
        body.append(
            f'<span style="background:rgba(214,39,40,{min(bits / RED_BITS, 1.0):.3f})" '
            f'title="{bits:.2f} bits">{html.escape(text[start:end])}</span>'
        )
        at = max(at, end)
    body.append(html.escape(text[at:]))
    figures = score.to_dict()
    title = html.escape(f"{score.text.name.strip(chr(39))} under {Path(score.model).name}")
    summary = html.escape(
        f"{figures['total_bits']:,.0f} bits: {figures['bits_per_byte']:.4f} bits per byte, "
        f"{figures['bits_per_token']:.4f} per token, perplexity "
        f"{figures['perplexity_per_token']:.3f} ({score.tokens:,} tokens, "
        f"{len(score.text.data):,} bytes; model {score.model})"
    )
    return (
        '<!DOCTYPE html>\n<html><head><meta charset="utf-8">\n'
        f'<meta name="generator" content="{GENERATOR}">\n<title>{title}</title>\n'
        "<style>body{font-family:sans-serif;margin:2em}pre{white-space:pre-wrap;"
        "font-family:monospace;line-height:1.5}</style></head><body>\n"
        f"<h1>{title}</h1>\n<p>{summary}. Colour: bits of each token, white 0, red ≥ "
        f"{RED_BITS:g}; hover for the number.</p>\n<pre>{''.join(body)}</pre>\n</body></html>\n"
    )


def recognise(path: Path) -> str | None:
    """None if ``path`` is a page this command wrote (which ``--force`` may replace)."""
    with path.open("rb") as file:
        start = file.read(4096)
    return None if GENERATOR.encode() in start else "is not a page crossent text score wrote"
