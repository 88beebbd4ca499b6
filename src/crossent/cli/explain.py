"""``crossent explain``: the article's argument (docs/theory.md §3–§6), step by step, on numbers.

Every number printed is computed by the library's public functions, and every identity shown
(NLL = cross entropy, D = H(p, q) − H(p), batch NLL = sum of per-example cross entropies) is
checked on the spot: the command fails loudly if one does not hold.
"""

from __future__ import annotations

import argparse
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from crossent.cli._output import add_force, add_json, claimed_json, write_json

if TYPE_CHECKING:
    from rich.console import Console

ARTICLE_Q = "1/2,1/4,1/4"  # the article's f: the distribution the code is built for
DEFAULT_P = "1/8,1/8,3/4"  # what outcomes really follow in the walk-through


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "explain",
        help="walk through entropy, cross entropy, KL and NLL with numbers, in bits",
        description=(
            "Walk through the article 'Cross Entropy and Log Likelihood' with numbers: the "
            "code built for q, outcomes that really follow p, H(p, q) against H(q, p), "
            "D(p || q) = H(p, q) - H(p), the NLL of one observation and of a batch."
        ),
    )
    parser.add_argument(
        "--p",
        default=DEFAULT_P,
        metavar="P1,P2,...",
        help=f"the true distribution outcomes follow (default {DEFAULT_P}); fractions allowed",
    )
    parser.add_argument(
        "--q",
        default=ARTICLE_Q,
        metavar="Q1,Q2,...",
        help=f"the model: the distribution the code is built for (default {ARTICLE_Q})",
    )
    parser.add_argument("--batch", type=int, default=5, help="observations in the batch step")
    parser.add_argument("--seed", type=int, default=0, help="seed for the sampled observations")
    parser.add_argument(
        "--code",
        action="store_true",
        help="also play twenty questions: Huffman codes of q and p, their questions, and the "
        "measured questions per outcome against H(p) and H(p, q)",
    )
    parser.add_argument(
        "--games", type=int, default=10_000, help="outcomes drawn from p in the --code game"
    )
    add_json(parser)
    add_force(parser)
    parser.set_defaults(run=run)


def parse_distribution(name: str, text: str) -> list[float]:
    """'1/2,1/4,1/4' or '0.5 0.25 0.25' as a list of floats (validated by the measures)."""
    parts = text.replace(",", " ").split()
    if not parts:
        raise ValueError(f"`--{name}` must list probabilities such as 1/2,1/4,1/4; got {text!r}")
    try:
        return [float(Fraction(part)) for part in parts]
    except (ValueError, ZeroDivisionError, OverflowError):
        raise ValueError(
            f"`--{name}` must list numbers or fractions such as 1/2,1/4,1/4; got {text!r}"
        ) from None


def run(args: argparse.Namespace, console: Console) -> None:
    from crossent.cli._walkthrough import checked, walk_through

    p = parse_distribution("p", args.p)
    q = parse_distribution("q", args.q)
    if len(p) != len(q):
        raise ValueError(
            f"`--p` and `--q` must give one probability per outcome; got {len(p)} and {len(q)}"
        )
    if args.batch < 1:
        raise ValueError(f"`--batch` must be at least 1; got {args.batch}")
    if args.seed < 0:
        raise ValueError(f"`--seed` must be a non-negative integer; got {args.seed}")
    if args.code and args.games < 1:
        raise ValueError(f"`--games` must be at least 1; got {args.games}")
    p, q = checked("--p", p), checked("--q", q)
    with claimed_json(args.json, force=args.force) as json_file:
        write_json(json_file, walk_through(console, args, p, q))
