"""PyTorch losses: ``from crossent.torch import cross_entropy``.

:func:`cross_entropy` is a drop-in for ``torch.nn.functional.cross_entropy`` that follows the
math where PyTorch does not, computes the gradient in the same pass as the loss, and takes
z-loss and logit soft-capping; :class:`CrossEntropyLoss` is its ``nn.Module``.
:func:`linear_cross_entropy` is the loss of a linear head, ``hidden @ weight.T + bias``, that
never holds the N×C logits; :class:`LinearCrossEntropy` is a head module built on it.
On the CPU the memory of a freed gradient is kept for the next call; :func:`empty_cache`
gives it back.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from crossent._checks import Reduction
from crossent.torch._reuse import empty_cache
from crossent.torch.cross_entropy import cross_entropy
from crossent.torch.linear_cross_entropy import linear_cross_entropy
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


class LinearCrossEntropy(torch.nn.Module):
    """A classifier head and its loss in one: ``nn.Linear(in_features, classes)`` followed by
    cross entropy, computed by :func:`linear_cross_entropy` without the N×C logits.

    ``forward(hidden, target)`` returns the loss; :meth:`logits` gives the logits for
    inference. The parameters are initialised as ``nn.Linear``'s, and :meth:`from_linear`
    wraps the parameters of an existing ``nn.Linear``.
    """

    def __init__(
        self,
        in_features: int,
        classes: int,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        linear = torch.nn.Linear(in_features, classes, bias, device=device, dtype=dtype)
        self.weight = linear.weight
        self.bias = linear.bias
        self.options: dict[str, Any] = options

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, **options: Any) -> LinearCrossEntropy:
        """A head sharing ``linear``'s parameters (not copies), with the loss's ``options``."""
        head = cls.__new__(cls)
        torch.nn.Module.__init__(head)
        head.weight, head.bias, head.options = linear.weight, linear.bias, options
        return head

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden @ weight.T + bias``: the logits, for inference."""
        return torch.nn.functional.linear(hidden, self.weight, self.bias)

    def forward(self, hidden: torch.Tensor, target: torch.Tensor) -> Any:
        return linear_cross_entropy(hidden, self.weight, target, bias=self.bias, **self.options)

    def extra_repr(self) -> str:
        classes, features = self.weight.shape
        options = "".join(f", {name}={value!r}" for name, value in self.options.items())
        return f"in_features={features}, classes={classes}, bias={self.bias is not None}{options}"


__all__ = [
    "CrossEntropyLoss",
    "LinearCrossEntropy",
    "cross_entropy",
    "cross_entropy_reference",
    "empty_cache",
    "linear_cross_entropy",
]
