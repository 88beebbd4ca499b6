"""Training the byte model: minibatch Adam on its cross entropy in bits per byte.

Every position of the corpus is an example: its features (:func:`crossent.text.features.
features`, computed once for the whole corpus) and its byte. The float network mirrors the
integer one of :mod:`crossent.text.byte_model` (embeddings, a ReLU layer, 256 logits plus one
copy gate per match order) and is trained with :func:`crossent.torch.cross_entropy` in base 2,
so its loss is the code length in bits per byte; the embeddings get sparse gradients (Adam's
sparse variant), the two layers dense ones. At the end it is rounded to integers
(:func:`crossent.text.byte_model.from_float`).

Held-out bits per byte are measured on held-out text (its own features, as ``crossent text
score`` computes them) every ``eval_seconds`` of training: the history that
docs/benchmarks.md plots against training minutes. With ``keep_best`` (the default) the model
returned is the one of the evaluation with the fewest held-out bits, not the last: the hashed
tables can memorise the corpus, and after some minutes held-out bits rise again while the
training bits still fall (early stopping; the held-out text then served to choose the model,
so report the model's bits on other text).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from crossent.text.byte_model import ByteConfig, ByteModel, from_float
from crossent.text.features import NONE, features
from crossent.torch import cross_entropy

_INIT = 0.05  # standard deviation of the initial embeddings


@dataclass(frozen=True)
class TrainOptions:
    """How long and how to train: ``steps`` (0: no limit) and ``minutes`` (None: no limit)
    both stop training, whichever comes first; at least one must be set."""

    steps: int = 0
    minutes: float | None = None
    batch_size: int = 1024
    learning_rate: float = 0.003
    seed: int = 0
    eval_seconds: float = 30.0
    eval_bytes: int = 1 << 18
    keep_best: bool = True

    def __post_init__(self) -> None:
        if self.steps < 0 or (self.minutes is not None and not 0 < self.minutes < math.inf):
            raise ValueError(
                f"`steps` must be ≥ 0 and `minutes` > 0; got {self.steps}, {self.minutes}"
            )
        if self.steps == 0 and self.minutes is None:
            raise ValueError("give `steps` or `minutes`: training needs a limit")
        if self.batch_size < 1 or not 0 < self.learning_rate < math.inf:
            raise ValueError(
                f"`batch_size` must be ≥ 1 and `learning_rate` > 0; got {self.batch_size}, "
                f"{self.learning_rate}"
            )


@dataclass
class Trained:
    """The rounded model, and what training measured along the way."""

    model: ByteModel
    history: list[dict[str, float]] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    kept: dict[str, float] = field(default_factory=dict)  # the history entry of the model


class _Network(torch.nn.Module):
    """The byte model in float32, for training; logits in nats."""

    def __init__(self, config: ByteConfig) -> None:
        super().__init__()
        rows = config.table_rows
        self.register_buffer("offsets", torch.tensor(np.cumsum([0, *rows[:-1]])))
        self.embeddings = torch.nn.Embedding(sum(rows), config.width, sparse=True)
        torch.nn.init.normal_(self.embeddings.weight, std=_INIT)
        self.hidden = torch.nn.Linear(config.inputs, config.hidden)
        self.out = torch.nn.Linear(config.hidden, NONE + len(config.spec.matches))

    def forward(self, contexts: torch.Tensor, matches: torch.Tensor) -> torch.Tensor:
        offsets: torch.Tensor = self.offsets  # type: ignore[assignment]
        rows = torch.cat([contexts, matches], dim=1) + offsets
        x = self.embeddings(rows).flatten(1)
        out = self.out(torch.relu(self.hidden(x)))
        logits = torch.nn.functional.pad(out[:, :NONE], (0, 1))  # column NONE: the misses
        return logits.scatter_add(1, matches, out[:, NONE:])[:, :NONE]

    def parameters_as_arrays(self) -> dict[str, np.ndarray]:
        """The parameters as ``x @ w1 + b1`` uses them (float64)."""
        arrays = {
            "embeddings": self.embeddings.weight,
            "w1": self.hidden.weight.T,
            "b1": self.hidden.bias,
            "w2": self.out.weight.T,
            "b2": self.out.bias,
        }
        return {k: v.detach().double().numpy() for k, v in arrays.items()}


class _Examples:
    """The features and bytes of a text, as tensors to draw minibatches from."""

    def __init__(self, data: np.ndarray, config: ByteConfig) -> None:
        contexts, matches = features(data, config.spec)
        self.contexts = torch.from_numpy(contexts)
        self.matches = torch.from_numpy(matches)
        self.targets = torch.from_numpy(data.astype(np.int64))

    def __len__(self) -> int:
        return len(self.targets)

    def bits(self, network: _Network, rows: torch.Tensor) -> torch.Tensor:
        logits = network(self.contexts[rows], self.matches[rows])
        return cross_entropy(logits, self.targets[rows], base=2.0)


def train(
    corpus: np.ndarray,
    held_out: np.ndarray | None,
    config: ByteConfig,
    options: TrainOptions,
    on_step: Callable[[int, float, float], None] | None = None,
) -> Trained:
    """Fit a byte model to ``corpus`` by Adam on its cross entropy in bits per byte
    (:func:`crossent.torch.cross_entropy` with ``base=2``); measure it on ``held_out`` as it
    goes.

    Args:
        corpus: the training text, a ``uint8`` array of bytes.
        held_out: text to measure (and, with ``options.keep_best``, to choose) the model on,
            or None.
        config: the model's shape: features, embedding width, hidden units.
        options: how long and how to train (steps or minutes, batch, learning rate, seed).
        on_step: called as ``on_step(step, seconds, bits)`` after each step with the
            minibatch's bits per byte, or None.

    Returns:
        A :class:`Trained`: the integer model, and a history with one entry per evaluation:
        ``seconds``, ``step``, ``bytes_seen``, ``train_bits_per_byte`` (mean over the steps
        since the last one) and, with held-out text, ``held_out_bits_per_byte`` (float
        network; the rounded one scores within 1e-3 of it).

    docs/text.md ("In Python") trains a small one in seconds, saves, loads and scores it.
    """
    torch.manual_seed(options.seed)
    generator = torch.Generator().manual_seed(options.seed)
    network = _Network(config)
    examples = _Examples(np.asarray(corpus, dtype=np.uint8), config)
    held = _Examples(np.asarray(held_out, dtype=np.uint8), config) if held_out is not None else None
    sparse = torch.optim.SparseAdam(list(network.embeddings.parameters()), options.learning_rate)
    dense_parameters = [*network.hidden.parameters(), *network.out.parameters()]
    dense = torch.optim.Adam(dense_parameters, options.learning_rate)
    result = Trained(from_float(config, network.parameters_as_arrays()))
    best = _Best(network, options.keep_best and held is not None)
    limit = math.inf if options.minutes is None else 60.0 * options.minutes
    start, last_eval, running = time.perf_counter(), -math.inf, []
    step = 0
    while (options.steps == 0 or step < options.steps) and time.perf_counter() - start < limit:
        rows = torch.randint(len(examples), (options.batch_size,), generator=generator)
        loss = examples.bits(network, rows)
        sparse.zero_grad()
        dense.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        sparse.step()  # type: ignore[no-untyped-call]
        dense.step()
        step += 1
        running.append(loss.item())
        seconds = time.perf_counter() - start
        if on_step is not None:
            on_step(step, seconds, running[-1])
        if seconds - last_eval >= options.eval_seconds:
            result.history.append(_evaluate(network, held, options, step, seconds, running))
            best.offer(result.history[-1])
            last_eval, running = seconds, []
    result.seconds = time.perf_counter() - start
    if running or not result.history:
        result.history.append(_evaluate(network, held, options, step, result.seconds, running))
        best.offer(result.history[-1])
    result.steps = step
    result.kept = best.restore() or result.history[-1]
    result.model = from_float(config, network.parameters_as_arrays())
    return result


class _Best:
    """The parameters of the evaluation with the fewest held-out bits so far (if ``active``)."""

    def __init__(self, network: _Network, active: bool) -> None:
        self.network, self.active = network, active
        self.entry: dict[str, Any] | None = None
        self.state: dict[str, torch.Tensor] = {}

    def offer(self, entry: dict[str, Any]) -> None:
        bits = entry.get("held_out_bits_per_byte", math.inf)
        if self.active and (self.entry is None or bits < self.entry["held_out_bits_per_byte"]):
            self.entry = entry
            self.state = {k: v.detach().clone() for k, v in self.network.state_dict().items()}

    def restore(self) -> dict[str, Any] | None:
        """Load the kept parameters into the network; their history entry (None if none)."""
        if self.entry is not None:
            self.network.load_state_dict(self.state)
        return self.entry


def _evaluate(
    network: _Network,
    held: _Examples | None,
    options: TrainOptions,
    step: int,
    seconds: float,
    running: list[float],
) -> dict[str, Any]:
    """One entry of the history; held-out bits of the first ``eval_bytes`` held-out bytes."""
    entry: dict[str, Any] = {
        "seconds": round(seconds, 3),
        "step": step,
        "bytes_seen": step * options.batch_size,
        "train_bits_per_byte": float(np.mean(running)) if running else math.nan,
    }
    if held is not None:
        rows = torch.arange(min(len(held), options.eval_bytes))
        with torch.no_grad():
            parts = rows.split(8192)  # type: ignore[no-untyped-call]
            total = sum(float(held.bits(network, part)) * len(part) for part in parts)
        entry["held_out_bits_per_byte"] = total / len(rows)
    return entry
