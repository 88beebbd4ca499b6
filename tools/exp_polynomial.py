"""The exp polynomial of the C kernel, regenerated and checked: ``make sanitize`` runs it.

``_native.c`` computes exp(t) for t ≤ 0 as 2^k · exp(r), t = k ln 2 + r with |r| ≤ ln 2 / 2, and
exp(r) ≈ 1 + r + r² P(r) with P of degree 4 chosen for the least maximum *relative* error
over that interval. This script finds that P again — the minimax polynomial of the weighted
problem min max |r² (P(r) − f(r)) / e^r|, f(r) = (e^r − 1 − r) / r², as a linear program on a
fine grid — reads the five coefficients in ``_native.c``, and checks that

1. the minimax error is the one ``_native.c`` states (3e-9, in exact arithmetic),
2. ``_native.c``'s coefficients are the minimax ones within 2e-6 relative (they are float32
   numbers, and rounding the lower ones moves the best choice of the higher ones), and
3. their error is no more than 1% above that of the minimax coefficients rounded to float32.

    python tools/exp_polynomial.py        # prints both sets and their errors; exit status 1
                                          # when the coefficients in _native.c do not check
"""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).resolve().parent.parent / "src" / "crossent" / "torch" / "_native.c"
HALF_LN2 = math.log(2) / 2
DEGREE = 4
STATED_ERROR = 3e-9  # "fitted for the least relative error (3e-9 ...)" in _native.c


def target(r: np.ndarray) -> np.ndarray:
    """f(r) = (e^r − 1 − r) / r², by its series near 0 (no cancellation)."""
    small = np.abs(r) < 1e-3
    safe = np.where(small, 1.0, r)
    series = sum(r**k / math.factorial(k + 2) for k in range(7))
    return np.where(small, series, (np.expm1(safe) - safe) / safe**2)


def relative_error(coefficients: np.ndarray, r: np.ndarray) -> np.ndarray:
    """(1 + r + r² P(r) − e^r) / e^r, P(r) = Σ_k c_k r^k."""
    return r**2 * (np.polyval(coefficients[::-1], r) - target(r)) * np.exp(-r)


def minimax(points: int = 20_001) -> tuple[np.ndarray, float]:
    """P's coefficients (lowest degree first) and the least maximum relative error, as the
    linear program min t subject to |relative error(r_i)| ≤ t on a fine grid, solved about the
    least-squares fit and scaled so that its numbers are of order 1 (the errors are 1e-9)."""
    from scipy.optimize import linprog

    r = np.linspace(-HALF_LN2, HALF_LN2, points)
    weight = r**2 * np.exp(-r)
    powers = np.column_stack([r**k for k in range(DEGREE + 1)]) * weight[:, None]
    goal = target(r) * weight
    start = np.linalg.lstsq(powers, goal, rcond=None)[0]
    scale = float(np.abs(powers @ start - goal).max())  # unknowns: start + scale · u
    residual = (powers @ start - goal) / scale
    ones = np.ones((points, 1))
    bounds = np.vstack([np.hstack([powers, -ones]), np.hstack([-powers, -ones])])
    limits = np.concatenate([-residual, residual])
    cost = np.zeros(DEGREE + 2)
    cost[-1] = 1.0
    free = [(None, None)] * (DEGREE + 1) + [(0, None)]
    solved = linprog(cost, A_ub=bounds, b_ub=limits, bounds=free, method="highs")
    if not solved.success:
        raise RuntimeError(f"the linear program failed: {solved.message}")
    coefficients = start + scale * solved.x[:-1]
    return coefficients, float(np.abs(relative_error(coefficients, r)).max())


def coefficients_in_source() -> np.ndarray:
    """The five float literals of ``p = ...`` in ``exp_nonpositive``, lowest degree first."""
    body = SOURCE.read_text().split("static inline float exp_nonpositive", 1)[1].split("}", 1)[0]
    found = [float(value) for value in re.findall(r"p(?: = | \* r \+ )([0-9.]+(?:e-?\d+)?)f", body)]
    if len(found) != DEGREE + 1:
        raise LookupError(f"expected {DEGREE + 1} coefficients in {SOURCE.name}; found {found}")
    return np.array(found[::-1])


def main() -> int:
    best, best_error = minimax()
    ours = coefficients_in_source()
    grid = np.linspace(-HALF_LN2, HALF_LN2, 200_001)
    our_error = float(np.abs(relative_error(ours, grid)).max())
    as_float32 = best.astype(np.float32).astype(np.float64)
    print(f"{'degree':>6} {'minimax':>24} {'as float32':>16} {'_native.c':>16}")
    for k in range(DEGREE + 1):
        print(f"{k:>6} {best[k]:>24.17g} {as_float32[k]:>16.9g} {ours[k]:>16.9g}")
    print(f"largest relative error: minimax {best_error:.3g}, _native.c {our_error:.3g}")
    checks = {
        f"the minimax error rounds to the stated {STATED_ERROR:g}": round(best_error, 9)
        == STATED_ERROR,
        "_native.c's coefficients are the minimax ones within 2e-6": bool(
            np.all(np.abs(ours - best) <= 2e-6 * np.abs(best))
        ),
        "_native.c's error is within 1% of the rounded minimax's": our_error
        <= 1.01 * float(np.abs(relative_error(as_float32, grid)).max()),
    }
    for name, passed in checks.items():
        print(("ok      " if passed else "FAILED  ") + name)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
