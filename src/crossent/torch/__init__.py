"""PyTorch losses: ``from crossent.torch import cross_entropy``.

:func:`cross_entropy` is a drop-in for ``torch.nn.functional.cross_entropy`` (its arguments, in
its order) that follows the math where PyTorch does not, computes the gradient in the same
pass as the loss on the CPU, and takes z-loss and logit soft-capping;
:class:`CrossEntropyLoss` is its ``nn.Module``. :func:`linear_cross_entropy` is the loss of a
linear head, ``hidden @ weight.T + bias``, that never holds the N×C logits;
:class:`LinearCrossEntropy` is a head module built on it. Both work under ``torch.compile``
(whole graphs), ``torch.func`` and double backward. On the CPU the memory of a freed gradient
is kept for the next call; :func:`empty_cache` gives it back. :func:`native_available` says
whether the compiled CPU kernel was built.
"""

from __future__ import annotations

from crossent.torch._head_loss import linear_cross_entropy
from crossent.torch._logits_loss import cross_entropy
from crossent.torch._modules import CrossEntropyLoss, LinearCrossEntropy
from crossent.torch._native_rows import native_available
from crossent.torch._reuse import empty_cache
from crossent.torch.reference import cross_entropy_reference

__all__ = [
    "CrossEntropyLoss",
    "LinearCrossEntropy",
    "cross_entropy",
    "cross_entropy_reference",
    "empty_cache",
    "linear_cross_entropy",
    "native_available",
]
