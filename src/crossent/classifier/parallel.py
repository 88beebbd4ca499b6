"""Data-parallel training: the same SGD on several processes, each with part of every batch.

:func:`train_data_parallel` starts ``processes`` workers with
:func:`crossent.torch.distributed.launch` (gloo on the CPU). Each holds a replica of the model
and trains it with :func:`crossent.classifier.train.train` on its own part of every minibatch
of the same shuffled order; ``DistributedDataParallel`` sums the gradients, so all replicas
take the single process's steps. Rank 0 reports progress and the held-out loss to this process
and sends back the trained weights, which are loaded into ``model``.

Under torchrun (``torchrun --nproc-per-node N -m crossent train ...``) the processes exist
already: :func:`torchrun_rank` tells ``crossent train`` which one it is, and each trains with
``train(..., data_parallel=True)`` in its own process.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from crossent.classifier.model import SoftmaxClassifier
from crossent.classifier.options import STALL_TIMEOUT, SGDOptions
from crossent.classifier.train import EpochCallback, History, Step, train


def train_data_parallel(
    model: SoftmaxClassifier,
    features: np.ndarray,
    labels: np.ndarray,
    options: SGDOptions,
    *,
    processes: int,
    held_out: tuple[np.ndarray, np.ndarray] | None = None,
    on_step: Step | None = None,
    on_epoch: EpochCallback | None = None,
    timeout: float = STALL_TIMEOUT,
) -> History:
    """:func:`~crossent.classifier.train.train` on ``processes`` processes; ``model`` is
    fitted in place and the history is rank 0's, whose losses are those of whole batches.

    A rank that fails, dies, or finishes no step for ``timeout`` seconds (stopped, or stuck)
    stops all of them with :class:`crossent.torch.distributed.WorkerError`, which names it.
    """
    from crossent.torch.distributed import launch
    from crossent.torch.distributed.launch import COLLECTIVE_TIMEOUT

    def on_message(rank: int, message: tuple[Any, ...]) -> None:
        kind, *payload = message
        if kind == "step" and on_step is not None:
            on_step(*payload)
        elif kind == "epoch" and on_epoch is not None:
            on_epoch(*payload)

    wanted = (on_step is not None, on_epoch is not None)
    results = launch(
        _train_rank,
        processes,
        args=(model, features, labels, options, held_out, wanted),
        stall_timeout=timeout,
        # longer than the stall timeout, so that the rank that hung is named, not one that
        # waited for it in a collective
        collective_timeout=max(COLLECTIVE_TIMEOUT, 2 * timeout),
        on_message=on_message,
    )
    state, history = results[0]
    model.load_state_dict(state)
    return history  # type: ignore[no-any-return]


def _train_rank(
    rank: int,
    world: int,
    model: SoftmaxClassifier,
    features: np.ndarray,
    labels: np.ndarray,
    options: SGDOptions,
    held_out: tuple[np.ndarray, np.ndarray] | None,
    wanted: tuple[bool, bool],
) -> tuple[dict[str, Any], History] | None:
    """In a worker: train this rank's replica, beating after every step; rank 0 reports
    and returns the result."""
    from crossent.torch.distributed import report
    from crossent.torch.distributed.launch import beat

    lead = rank == 0

    def on_step(*step: Any) -> None:
        beat()
        if lead and wanted[0]:
            report(("step", *step))

    def on_epoch(*epoch: Any) -> None:
        beat()
        if lead and wanted[1]:
            report(("epoch", *epoch))

    history = train(
        model,
        features,
        labels,
        options,
        held_out=held_out if lead else None,
        on_step=on_step,
        on_epoch=on_epoch,
        data_parallel=True,
    )
    return (model.state_dict(), history) if lead else None


def torchrun_rank() -> int | None:
    """This process's rank when torchrun (or another launcher that sets ``RANK`` and
    ``WORLD_SIZE``) started several processes; None otherwise."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return int(os.environ["RANK"])
