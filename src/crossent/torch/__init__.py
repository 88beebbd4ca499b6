"""PyTorch losses: ``from crossent.torch import cross_entropy``.

:func:`cross_entropy` is a drop-in for ``torch.nn.functional.cross_entropy`` that follows the
math where PyTorch does not, computes the gradient in the same pass as the loss, and takes
z-loss and logit soft-capping; :class:`CrossEntropyLoss` is its ``nn.Module``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from crossent._checks import Reduction
from crossent.torch.cross_entropy import cross_entropy
from crossent.torch.reference import cross_entropy_reference


class CrossEntropyLoss(torch.nn.Module):
    """The module form of :func:`cross_entropy`, with its options fixed at construction."""

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        ignore_index: int = -100,
        reduction: Reduction = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        base: float = math.e,
    ) -> None:
        super().__init__()
        self.weight: torch.Tensor | None
        self.register_buffer("weight", weight)
        self.options: dict[str, Any] = {
            "ignore_index": ignore_index,
            "reduction": reduction,
            "label_smoothing": label_smoothing,
            "z_loss": z_loss,
            "softcap": softcap,
            "base": base,
        }

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return cross_entropy(logits, target, weight=self.weight, **self.options)


__all__ = ["CrossEntropyLoss", "cross_entropy", "cross_entropy_reference"]
