"""Which backend computes a pass: the one rule.

- a shard of the classes (vocabulary parallelism): the torch-ops pass, combined over ranks
  (:mod:`crossent.torch.distributed._sharded`);
- CUDA tensors of float32, float16 or bfloat16 where Triton is installed: the Triton kernels
  (:mod:`crossent.torch._triton`); float64 stays in torch ops, which compute it in float64;
- float32 rows with index targets and no soft-capping on the CPU: the compiled kernel
  (:mod:`crossent.torch._native_rows`), where it was built;
- everything else: the torch-ops pass (:mod:`crossent.torch._torch_ops`).

The linear head's low-memory mode follows the same rule: Triton tiles where Triton runs, else
blocks of classes in PyTorch (:mod:`crossent.torch._class_blocks`).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from types import ModuleType
from typing import Protocol

import torch

from crossent.torch import _class_blocks, _native_rows, _torch_ops
from crossent.torch._spec import LossOptions
from crossent.torch._torch_ops import Shard


class Kernel(Protocol):
    """A pass over rows of logits: their losses in nats, their gradient (each row's times
    ``grad_scale``) into ``grad`` and their log-sum-exps into ``lse``, when given. A backend
    may skip the log-sum-exp's pass when it is ``known_lse`` (the Triton kernels do; the
    others compute it again)."""

    def __call__(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        options: LossOptions,
        grad_scale: torch.Tensor | float | None,
        grad: torch.Tensor | None,
        lse: torch.Tensor | None = None,
        *,
        known_lse: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


def rows_kernel(
    rows: torch.Tensor,
    target: torch.Tensor,
    options: LossOptions,
    grad: torch.Tensor | None,
    shard: Shard | None = None,
) -> Kernel:
    """The backend for this pass over ``rows`` (R, C)."""
    if shard is not None:
        from crossent.torch.distributed import _sharded

        return functools.partial(_sharded.loss_and_grad, shard=shard)
    if uses_triton(rows):
        from crossent.torch._triton import cross_entropy as triton_rows

        return triton_rows.loss_and_grad
    if _native_rows.runs(rows, target, options, grad):
        return _native_rows.loss_and_grad
    return _torch_ops.loss_and_grad


def head_tiles(hidden: torch.Tensor) -> ModuleType:
    """The linear head's low-memory backend: Triton tiles where Triton runs, else blocks of
    classes in PyTorch. Both have ``forward`` and ``gradients``."""
    if uses_triton(hidden):
        return importlib.import_module("crossent.torch._triton.linear_cross_entropy")
    return _class_blocks


def uses_triton(tensor: torch.Tensor) -> bool:
    """The Triton kernels compute on CUDA tensors of float32, float16 and bfloat16, where
    Triton is installed."""
    return tensor.is_cuda and tensor.dtype != torch.float64 and _triton_installed()


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None
