"""What a user chooses for the classifier: the SGD settings, the bundled data sets, the
layouts of predictions and the stall timeout of data-parallel training.

Plain values, nothing heavy imported: the command line builds its parsers from them (their
choices and defaults) without importing torch, pyarrow or scikit-learn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

BUNDLED = ("iris", "wine", "digits", "breast_cancer")
"""scikit-learn's data sets that ``crossent train`` uses without a file."""
STALL_TIMEOUT = 30.0  # seconds without a step of some rank before it is named as hung
Layout = Literal["probs", "log-probs"]
LAYOUTS: tuple[Layout, ...] = ("probs", "log-probs")
Objective = Literal["nll", "cross-entropy", "kl"]
OBJECTIVES: tuple[Objective, ...] = ("nll", "cross-entropy", "kl")
Schedule = Literal["constant", "cosine"]
SCHEDULES: tuple[Schedule, ...] = ("constant", "cosine")


@dataclass(frozen=True)
class SGDOptions:
    """Minibatch SGD with momentum; weight decay λ adds (λ/2)‖W‖² on weights, not biases.

    Checked when made: an out-of-range option is a ValueError naming it.

    Attributes:
        learning_rate: the step size, > 0 (``crossent train --lr``).
        momentum: in [0, 1).
        weight_decay: λ ≥ 0 of the penalty (λ/2)‖W‖².
        epochs: passes over the training rows, ≥ 1.
        batch_size: rows per step, ≥ 1.
        objective: the loss minimised: "nll", "cross-entropy" or "kl" (equal for one-hot
            labels, so they take the same steps: docs/theory.md §5).
        schedule: the learning rate over all steps: "cosine" (to 0) or "constant".
        seed: the seed of the batch order.

    >>> SGDOptions(epochs=20, objective="kl").learning_rate
    0.1
    >>> SGDOptions(momentum=1.5)
    Traceback (most recent call last):
    ValueError: `momentum` must be in [0, 1); got 1.5
    """

    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-3
    epochs: int = 100
    batch_size: int = 32
    objective: Objective = "nll"
    schedule: Schedule = "cosine"
    seed: int = 0

    def __post_init__(self) -> None:
        _positive("learning_rate", self.learning_rate)
        _in_unit_interval("momentum", self.momentum)
        _positive("weight_decay", self.weight_decay, allow_zero=True)
        _positive("epochs", self.epochs)
        _positive("batch_size", self.batch_size)
        if self.schedule not in SCHEDULES:
            raise ValueError(f"`schedule` must be one of {SCHEDULES}; got {self.schedule!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"`objective` must be one of {OBJECTIVES}; got {self.objective!r}")


def _positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    if not (value > 0 or (allow_zero and value == 0)) or not math.isfinite(value):
        rule = "≥ 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be a finite number {rule}; got {value!r}")


def _in_unit_interval(name: str, value: float) -> None:
    if not 0 <= value < 1:
        raise ValueError(f"`{name}` must be in [0, 1); got {value!r}")
