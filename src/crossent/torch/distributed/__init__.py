"""crossent on several processes, through PyTorch's own engine, torch.distributed.

- :func:`vocab_parallel_cross_entropy` and :func:`vocab_parallel_linear_cross_entropy`: the
  losses of :mod:`crossent.torch` with the classes split over the ranks (each rank holds a
  contiguous slice of the logits, or of the head's weight); row statistics are combined with
  all-reduces and gradients stay local.
- :func:`launch`: run a function on several local processes joined into one process group
  (gloo on CPUs), with a timeout and a clear error when a rank fails or hangs; the data-parallel
  ``crossent train --nproc N`` runs on it.

Under ``torchrun`` (several GPUs or machines), initialise the process group as usual
(``torch.distributed.init_process_group("nccl")``) and call the losses directly.
"""

from __future__ import annotations

from crossent.torch.distributed.launch import WorkerError, launch, report
from crossent.torch.distributed.vocab_parallel import (
    vocab_parallel_cross_entropy,
    vocab_parallel_linear_cross_entropy,
)

__all__ = [
    "WorkerError",
    "launch",
    "report",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
]
