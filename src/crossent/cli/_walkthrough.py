"""The steps of ``crossent explain`` (docs/theory.md §3–§6), each computed with the library's
public functions and its identities checked on the spot; imported when the command runs, so
that ``crossent explain --help`` imports neither torch nor NumPy."""

from __future__ import annotations

import argparse
import math
import string
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from crossent import cross_entropy, entropy, kl_divergence, nll
from crossent._checks import check_probs
from crossent.coding import canonical_code, expected_length, shannon_lengths
from crossent.coding.huffman import code_cost, huffman_code, questions


def walk_through(
    console: Console, args: argparse.Namespace, p: list[float], q: list[float]
) -> dict[str, Any]:
    """Print the steps; return their numbers, in bits, for ``--json``."""
    outcomes = _outcome_names(len(p))
    console.rule("[bold]Cross entropy and log-likelihood, in bits")
    numbers: dict[str, Any] = {"outcomes": outcomes, "p": p, "q": q, "unit": "bits"}
    numbers["entropy"] = _entropy_step(console, outcomes, q)
    numbers["cross_entropy"] = _cross_entropy_step(console, outcomes, p, q)
    numbers["kl_divergence"] = _kl_step(console, p, q)
    numbers["observation"] = _observation_step(console, outcomes, p, q, args.seed)
    numbers["batch"] = _batch_step(console, outcomes, p, q, args.batch, args.seed)
    if args.code:
        numbers["questions"] = _questions_step(console, outcomes, p, q, args.games, args.seed)
    return numbers


def checked(option: str, dist: list[float]) -> list[float]:
    """The user's distribution, checked, then normalised exactly (it may be off by rounding)."""
    check_probs(option, torch.tensor(dist, dtype=torch.float64), dim=0)
    total = math.fsum(dist)
    return [x / total for x in dist]


def _outcome_names(count: int) -> list[str]:
    if count <= len(string.ascii_lowercase):
        return list(string.ascii_lowercase[:count])
    return [f"x{i}" for i in range(count)]


def _bits(value: float) -> str:
    return "inf" if math.isinf(value) else f"{value + 0.0:.4f}"  # + 0.0 turns -0.0 into 0.0


def _surprise(probability: float) -> float:
    """log2 1/q(x) in bits: +inf for an outcome of probability 0."""
    return math.log2(1 / probability) if probability > 0 else math.inf


def _entropy_step(console: Console, outcomes: list[str], q: list[float]) -> dict[str, Any]:
    lengths = shannon_lengths(q)
    words = canonical_code(lengths)
    table = Table(title="1. Entropy: the best yes/no questions for q (docs/theory.md §3)")
    for column in ("outcome x", "q(x)", "code word", "questions l(x)", "log2 1/q(x)"):
        table.add_column(column, justify="right")
    for x, qx, word, length in zip(outcomes, q, words, lengths, strict=True):
        shown_word = "—" if word is None else (word or "(none: certain)")
        shown_length = "—" if length is None else str(length)
        table.add_row(x, f"{qx:.4g}", shown_word, shown_length, _bits(_surprise(qx)))
    console.print(table)
    h_q = float(entropy(q))
    mean_length = expected_length(lengths, q)
    dyadic = all(math.log2(x).is_integer() for x in q if x > 0)
    why = (
        "exactly H(q), as every q(x) > 0 is a power of 1/2"
        if dyadic
        else "within one question of H(q), as H(q) ≤ L < H(q) + 1 for this code"
    )
    console.print(
        f"H(q) = Σ q(x) log2 1/q(x) = [bold]{_bits(h_q)} bits[/]: the expected number of "
        f"questions. This code (lengths ⌈log2 1/q(x)⌉) asks {_bits(mean_length)} on average: "
        f"{why}."
    )
    console.print()
    return {"H(q)": h_q, "code_words": words, "code_lengths": lengths, "mean_length": mean_length}


def _cross_entropy_step(
    console: Console, outcomes: list[str], p: list[float], q: list[float]
) -> dict[str, Any]:
    table = Table(title="2. Cross entropy: outcomes follow p, questions were made for q (§4)")
    for column in ("outcome x", "p(x) truth", "q(x) model", "log2 1/q(x)", "p(x)·log2 1/q(x)"):
        table.add_column(column, justify="right")
    for x, px, qx in zip(outcomes, p, q, strict=True):
        surprise = _surprise(qx)
        term = 0.0 if px == 0 else px * surprise
        table.add_row(x, f"{px:.4g}", f"{qx:.4g}", _bits(surprise), _bits(term))
    console.print(table)
    h_pq = float(cross_entropy(target_probs=p, pred_probs=q))
    h_qp = float(cross_entropy(target_probs=q, pred_probs=p))
    h_p = float(entropy(p))
    code_length = expected_length(shannon_lengths(q), p)
    order = (
        f"but H(q, p) = {_bits(h_qp)} bits: the truth weights, the model sits inside the log, "
        "and the order matters"
        if not math.isclose(h_pq, h_qp)
        else f"and H(q, p) = {_bits(h_qp)} bits too: equal for these two, but not in general "
        "(the truth weights, the model sits inside the log)"
    )
    console.print(
        f"H(p, q) = −Σ p log2 q = [bold]{_bits(h_pq)} bits[/], {order}.\n"
        f"p's own best questions need H(p) = {_bits(h_p)} bits ≤ H(p, q) (Gibbs). "
        f"q's code above asks {_bits(code_length)} questions on average when outcomes follow p "
        "(H(p, q) ≤ L < H(p, q) + 1 for this code)."
    )
    console.print()
    return {"H(p, q)": h_pq, "H(q, p)": h_qp, "H(p)": h_p, "mean_length_on_p": code_length}


def _kl_step(console: Console, p: list[float], q: list[float]) -> dict[str, Any]:
    d = float(kl_divergence(target_probs=p, pred_probs=q))
    difference = float(cross_entropy(target_probs=p, pred_probs=q)) - float(entropy(p))
    _require(math.isclose(d, difference, rel_tol=1e-9, abs_tol=1e-12), "D = H(p,q) − H(p)")
    console.print("[bold]3. Kullback–Leibler divergence: the extra questions (§5)[/]")
    console.print(
        f"D(p ‖ q) = Σ p log2 p/q = [bold]{_bits(d)} bits[/] = H(p, q) − H(p) = "
        f"{_bits(difference)}. "
        "H(p) depends on the data only, so minimising D, H(p, q) or the NLL picks the same model."
    )
    console.print()
    return {"D(p || q)": d, "H(p, q) - H(p)": difference}


def _observation_step(
    console: Console, outcomes: list[str], p: list[float], q: list[float], seed: int
) -> dict[str, Any]:
    j = int(np.random.default_rng(seed).choice(len(p), p=np.asarray(p) / sum(p)))
    one_hot = [1.0 if i == j else 0.0 for i in range(len(p))]
    as_nll = float(nll(target_index=j, pred_probs=q))
    as_ce = float(cross_entropy(target_probs=one_hot, pred_probs=q))
    _require(as_nll == as_ce, "NLL = H(y, q)")
    console.print("[bold]4. One observation: negative log-likelihood = cross entropy (§2)[/]")
    console.print(
        f"Outcome {outcomes[j]} is observed: y = {one_hot} (one-hot). The model's likelihood is "
        f"q({outcomes[j]}) = {q[j]:.4g}, so NLL = −log2 q({outcomes[j]}) = [bold]{_bits(as_nll)} "
        f"bits[/] = H(y, q) = −Σ y log2 q = {_bits(as_ce)}."
    )
    console.print()
    return {"observed": outcomes[j], "nll": as_nll, "H(y, q)": as_ce}


def _batch_step(
    console: Console, outcomes: list[str], p: list[float], q: list[float], size: int, seed: int
) -> dict[str, Any]:
    rng = np.random.default_rng(seed + 1)
    observed = rng.choice(len(p), size=size, p=np.asarray(p) / sum(p))
    # Each example gets its own prediction, as a classifier's depends on that example's x.
    with np.errstate(divide="ignore"):
        logits = np.log(np.asarray(q)) + rng.normal(0.0, 0.5, size=(size, len(q)))
    preds = np.exp(logits - logits.max(axis=1, keepdims=True))
    preds /= preds.sum(axis=1, keepdims=True)
    per_example = nll(target_index=observed, pred_probs=preds)
    total = float(nll(target_index=observed, pred_probs=preds, reduction="sum"))
    _require(math.isclose(total, float(np.sum(per_example))), "batch NLL = Σ per-example")
    table = Table(title=f"5. A batch of {size}: the NLL of the batch is a sum (§6)")
    for column in ("example i", "observed y", "model q⁽ⁱ⁾ (its own x)", "−log2 q⁽ⁱ⁾(y) bits"):
        table.add_column(column, justify="right")
    for i, (y, pred, value) in enumerate(zip(observed, preds, per_example, strict=True)):
        shown = ", ".join(f"{v:.3f}" for v in pred)
        table.add_row(str(i + 1), outcomes[int(y)], f"({shown})", _bits(float(value)))
    console.print(table)
    likelihood = f"2^-{total:.1f}" if total > 1000 else f"{2.0**-total:.4g}"  # no underflow
    console.print(
        f"Batch NLL = −log2 Π q⁽ⁱ⁾(yᵢ) = −log2 {likelihood} = [bold]{_bits(total)} bits[/] "
        f"(total, reduction='sum') = the sum of the per-example cross entropies; "
        f"per example (reduction='mean'): {_bits(total / size)} bits."
    )
    return {
        "observed": [outcomes[int(y)] for y in observed],
        "predictions": preds.tolist(),
        "nll_per_example": [float(v) for v in per_example],
        "nll_sum": total,
        "nll_mean": total / size,
    }


def _questions_step(
    console: Console, outcomes: list[str], p: list[float], q: list[float], games: int, seed: int
) -> dict[str, Any]:
    """Twenty questions with the best questions for q, then for p, on outcomes drawn from p."""
    for_q, for_p = huffman_code(q), huffman_code(p)
    console.print()
    table = Table(title="6. Twenty questions: the Huffman code of q, each bit a yes/no question")
    for column in ("outcome x", "q(x)", "p(x)", "code word", "questions asked (answer)"):
        table.add_column(column, justify="left" if column.startswith("questions") else "right")
    for x, qx, px, word, asked in zip(
        outcomes, q, p, for_q, questions(for_q, outcomes), strict=True
    ):
        shown = "; ".join(f"{text} {'yes' if answer else 'no'}" for text, answer in asked)
        table.add_row(
            x,
            f"{qx:.4g}",
            f"{px:.4g}",
            "—" if word is None else word or "(none)",
            shown or ("never asked: q(x) = 0" if word is None else "none needed"),
        )
    console.print(table)
    played = code_cost(for_q, q, p, samples=games, seed=seed + 2)
    best = code_cost(for_p, p, p, samples=games, seed=seed + 2)
    own = code_cost(for_q, q, q)
    _require(
        math.isclose(
            played.expected, played.entropy + played.divergence_to_code, rel_tol=1e-9, abs_tol=1e-12
        ),
        "L = H(g) + D(g ‖ 2^-l)",
    )
    console.print(
        f"On outcomes that follow q this code asks L = {_bits(own.expected)} questions on "
        f"average; H(q) = {_bits(own.entropy)} ≤ L < H(q) + 1.\n"
        f"{games:,} outcomes drawn from p, asked q's questions: [bold]"
        f"{_bits(played.measured or 0.0)} questions each[/] (measured by encoding and decoding "
        f"them); exactly L = H(p) + D(p ‖ 2^-l) = {_bits(played.entropy)} + "
        f"{_bits(played.divergence_to_code)} = {_bits(played.expected)}, against the cross "
        f"entropy H(p, q) = {_bits(played.cross_entropy_to_model)}.\n"
        f"The best questions for p (its own Huffman code) ask {_bits(best.measured or 0.0)} "
        f"each (exactly {_bits(best.expected)}; H(p) = {_bits(best.entropy)}): the difference "
        "is the price of questions made for the wrong distribution."
    )
    return {
        "code_words_of_q": for_q,
        "code_words_of_p": for_p,
        "games": games,
        "mean_length_on_q": own.expected,
        "measured_on_p": played.measured,
        "expected_on_p": played.expected,
        "divergence_to_code": played.divergence_to_code,
        "measured_with_own_code": best.measured,
        "expected_with_own_code": best.expected,
    }


def _require(holds: bool, identity: str) -> None:
    if not holds:
        raise RuntimeError(f"identity {identity} failed on these numbers: please report a bug")
