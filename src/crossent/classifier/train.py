"""Minibatch SGD on the negative log-likelihood (docs/theory.md §2), with three equal objectives.

For a one-hot y and predictions ŷ = softmax(z) (docs/theory.md §4–§5):

    NLL = −log ŷ_y = H(y, ŷ) = D_KL(y ‖ ŷ) + H(y),   and H(y) = 0,

so ``objective="nll"``, ``"cross-entropy"`` and ``"kl"`` are the same function of θ, computed
three ways, and SGD from the same seed takes the same steps with each. Losses are minimised in
nats (the learning rate then means what it means in PyTorch) and reported in bits.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from crossent.classifier.model import SoftmaxClassifier
from crossent.classifier.options import Objective, SGDOptions
from crossent.measures import cross_entropy, kl_divergence
from crossent.torch import cross_entropy as cross_entropy_loss


@dataclass
class History:
    """Per epoch: the running mean training loss and the held-out loss, bits per example.

    Attributes:
        train_bits: per epoch, the mean training loss over its steps, in bits per example.
        held_out_bits: per epoch, the mean NLL of the held-out rows in bits per example
            (empty when none were given).

    >>> History([1.2, 0.7], [1.3, 0.9]).held_out_bits[-1]
    0.9
    """

    train_bits: list[float] = field(default_factory=list)
    held_out_bits: list[float] = field(default_factory=list)


def objective_nats(
    objective: Objective,
    logits: torch.Tensor,
    labels: torch.Tensor,
    reduction: Literal["mean", "sum"] = "mean",
) -> torch.Tensor:
    """The mean (or summed) loss of a minibatch in nats, computed as the chosen measure.

    "nll" is the training loss of :mod:`crossent.torch` (−log p_y, gradient in one pass);
    "cross-entropy" and "kl" go through the information measures with one-hot targets.
    """
    if objective == "nll":
        return cross_entropy_loss(logits, labels, reduction=reduction)
    measure = cross_entropy if objective == "cross-entropy" else kl_divergence
    one_hot = torch.nn.functional.one_hot(labels, logits.shape[-1]).to(logits.dtype)
    return measure(  # type: ignore[no-any-return]
        target_probs=one_hot, pred_logits=logits, base=math.e, reduction=reduction, validate=False
    )


def mean_nll_bits(model: SoftmaxClassifier, features: np.ndarray, labels: np.ndarray) -> float:
    """Mean −log2 p(y | x) over a data set, in bits per example."""
    log_probs = model.log_probs(features)
    return float(-log_probs[np.arange(len(labels)), labels].mean() / math.log(2))


Step = Callable[[int, int, int, float], None]  # (epoch, step, steps per epoch, loss in bits)
EpochCallback = Callable[[int, "History"], None]


def train(
    model: SoftmaxClassifier,
    features: np.ndarray,
    labels: np.ndarray,
    options: SGDOptions,
    *,
    held_out: tuple[np.ndarray, np.ndarray] | None = None,
    on_step: Step | None = None,
    on_epoch: EpochCallback | None = None,
    data_parallel: bool = False,
) -> History:
    """Fit ``model`` in place by minibatch SGD, calling ``on_step`` after each step.

    With ``data_parallel`` (in a torch.distributed process group, see
    :mod:`crossent.classifier.parallel`) every rank takes its own part of each minibatch,
    through ``DistributedDataParallel``. The minibatch's NLL is then the sum of the parts'
    sums (docs/theory.md §6), so every rank minimises Σ_parts / B, and the steps, the losses
    reported and the trained weights are the single process's up to float rounding.

    A minibatch loss of inf or NaN (SGD diverged: the learning rate is too high) stops the
    training with a ValueError that names the epoch and the step, on every rank alike.

    Args:
        model: the :class:`SoftmaxClassifier` to train, in place.
        features: ``(N, D)`` raw features (the model standardises them).
        labels: ``(N,)`` class indices.
        options: the :class:`SGDOptions`.
        held_out: ``(features, labels)`` scored after every epoch, or None.
        on_step: ``on_step(epoch, step, steps_per_epoch, loss_bits)`` after every step, with
            the minibatch's mean loss in bits per example.
        on_epoch: ``on_epoch(epoch, history)`` after every epoch.
        data_parallel: train as one rank of the current process group.

    Returns:
        The :class:`History`: the loss per epoch in bits per example.

    >>> from crossent.classifier import ModelCard, SoftmaxClassifier, bundled
    >>> iris = bundled("iris")
    >>> mean, scale = iris.features.mean(0).tolist(), iris.features.std(0).tolist()
    >>> card = ModelCard(iris.classes, iris.feature_names, iris.target, [], mean, scale)
    >>> history = train(SoftmaxClassifier(card), iris.features, iris.labels, SGDOptions(epochs=5))
    >>> len(history.train_bits), history.train_bits[-1] < history.train_bits[0]  # bits fall
    (5, True)
    """
    torch.manual_seed(options.seed)
    x = torch.from_numpy(np.asarray(features, dtype=np.float32))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    optimiser = _optimiser(model, options)
    steps_per_epoch = math.ceil(len(y) / options.batch_size)
    scheduler = _scheduler(optimiser, options, options.epochs * steps_per_epoch)
    order = torch.Generator().manual_seed(options.seed)
    part = _Part.of_this_rank() if data_parallel else _Part()
    network = part.wrap(model)
    history = History()
    for epoch in range(options.epochs):
        model.train()
        total, seen = 0.0, 0
        shuffled = torch.randperm(len(y), generator=order)
        batches = shuffled.split(options.batch_size)  # type: ignore[no-untyped-call]
        for step, batch in enumerate(batches):
            mine = part.of(batch)
            loss_sum = objective_nats(options.objective, network(x[mine]), y[mine], "sum")
            optimiser.zero_grad(set_to_none=True)
            # the batch mean; DistributedDataParallel averages the gradient over the ranks
            (loss_sum * (part.ranks / len(batch))).backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            scheduler.step()
            batch_sum = part.total(loss_sum.detach())
            _check_finite(batch_sum, epoch, step, options)
            total, seen = total + batch_sum, seen + len(batch)
            if on_step is not None:
                on_step(epoch, step, steps_per_epoch, batch_sum / len(batch) / math.log(2))
        model.eval()
        history.train_bits.append(total / seen / math.log(2))
        if held_out is not None:
            history.held_out_bits.append(mean_nll_bits(model, *held_out))
        if on_epoch is not None:
            on_epoch(epoch, history)
    return history


def _check_finite(loss_sum: float, epoch: int, step: int, options: SGDOptions) -> None:
    if not math.isfinite(loss_sum):
        became = "NaN" if math.isnan(loss_sum) else "inf"
        raise ValueError(
            f"the training loss became {became} at epoch {epoch + 1}, step {step + 1}: "
            f"lower --lr (it is {options.learning_rate:g})"
        )


@dataclass(frozen=True)
class _Part:
    """This process's part of every minibatch: all of it, or rank r's of ``ranks`` parts."""

    rank: int = 0
    ranks: int = 1

    @classmethod
    def of_this_rank(cls) -> _Part:
        return cls(torch.distributed.get_rank(), torch.distributed.get_world_size())

    def wrap(self, model: SoftmaxClassifier) -> torch.nn.Module:
        """The model, or its DistributedDataParallel replica (gradients summed over ranks)."""
        if self.ranks == 1:
            return model
        # the standardisation buffers are constants: no broadcast before every forward
        replica = torch.nn.parallel.DistributedDataParallel
        newer = "forward_sync_buffers" in inspect.signature(replica).parameters  # torch ≥ 2.13
        no_sync: dict[str, Any] = {"forward_sync_buffers" if newer else "broadcast_buffers": False}
        return replica(model, **no_sync)

    def of(self, batch: torch.Tensor) -> torch.Tensor:
        """Rank r's contiguous part of ``batch``; parts differ by at most one example."""
        return batch if self.ranks == 1 else batch.tensor_split(self.ranks)[self.rank]

    def total(self, loss_sum: torch.Tensor) -> float:
        """The sum of every rank's ``loss_sum``."""
        if self.ranks > 1:
            loss_sum = loss_sum.clone()
            torch.distributed.all_reduce(loss_sum)
        return float(loss_sum)


def _optimiser(model: SoftmaxClassifier, options: SGDOptions) -> torch.optim.SGD:
    """SGD with weight decay on the weight matrices only, as in L2-regularised regression."""
    decayed = [p for name, p in model.named_parameters() if name.endswith("weight")]
    free = [p for name, p in model.named_parameters() if not name.endswith("weight")]
    groups = [
        {"params": decayed, "weight_decay": options.weight_decay},
        {"params": free, "weight_decay": 0.0},
    ]
    return torch.optim.SGD(groups, lr=options.learning_rate, momentum=options.momentum)


def _scheduler(
    optimiser: torch.optim.SGD, options: SGDOptions, steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Constant, or cosine decay to 0 over all steps, which lets SGD settle at the optimum."""
    if options.schedule == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: 1.0)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
