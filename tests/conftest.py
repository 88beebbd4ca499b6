"""Shared random inputs: batches of distributions with zeros, and logits with −inf entries."""

from __future__ import annotations

import os

import numpy as np
import torch

if not torch.cuda.is_available():
    # Triton kernels run in Triton's interpreter on CPU tensors; the variable is read when
    # triton is first imported, so it is set here, before any test module can import it.
    os.environ.setdefault("TRITON_INTERPRET", "1")
from hypothesis import Phase, settings
from hypothesis import strategies as st

settings.register_profile("default", deadline=None, max_examples=60)
# tools/mutate.py runs the tests once per mutant (HYPOTHESIS_PROFILE=mutation): fewer examples,
# and no shrinking, which can take minutes on a failing mutant where the first failure is enough
settings.register_profile(
    "mutation",
    deadline=None,
    max_examples=12,
    derandomize=True,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
    database=None,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def random_probs(
    rng: np.random.Generator, shape: tuple[int, ...], zero_fraction: float = 0.2
) -> np.ndarray:
    """Rows of probabilities (float64) along the last axis, some entries exactly 0."""
    weights = rng.gamma(0.5, size=shape)
    weights[rng.random(shape) < zero_fraction] = 0.0
    first = weights[..., 0]  # a view: every row keeps at least one positive entry
    first[weights.sum(axis=-1) == 0] = 1.0
    return weights / weights.sum(axis=-1, keepdims=True)


def random_logits(
    rng: np.random.Generator, shape: tuple[int, ...], neg_inf_fraction: float = 0.2
) -> np.ndarray:
    """Logits (float64) with some −inf entries, never a whole row of them."""
    logits = rng.normal(0.0, 3.0, size=shape)
    logits[rng.random(shape) < neg_inf_fraction] = -np.inf
    logits[..., 0] = np.where(np.isinf(logits).all(axis=-1), 0.0, logits[..., 0])
    return logits


def random_logits_and_forms(
    rng: np.random.Generator, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits z (with −inf entries) and the same distributions as log-probs and probs."""
    z = random_logits(rng, shape)
    log_p = torch.log_softmax(torch.from_numpy(z), dim=-1).numpy()
    return z, log_p, np.exp(log_p)


@st.composite
def batches(
    draw: st.DrawFn, max_rows: int = 6, max_classes: int = 9, min_classes: int = 1
) -> tuple:
    """(rng, shape): a seeded generator and a batch shape ``(rows, classes)``."""
    seed = draw(st.integers(0, 2**32 - 1))
    rows = draw(st.integers(1, max_rows))
    classes = draw(st.integers(min_classes, max_classes))
    return np.random.default_rng(seed), (rows, classes)
