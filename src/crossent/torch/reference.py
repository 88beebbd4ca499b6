"""The cross-entropy loss in plain PyTorch, float64: the readable definition and the test oracle.

For logits x of one example (C classes), capped to s·tanh(x / s) when ``softcap`` = s, with
lse = log Σ_j exp x_j and log p_j = x_j − lse, class weights w (all 1 by default) and label
smoothing ε, the loss of one example in nats is

    index target y:        −(1 − ε) w_y log p_y − (ε / C) Σ_j w_j log p_j   + z · lse²
    probability target t:  −Σ_j w_j t'_j log p_j,  t' = (1 − ε) t + ε / C     + z · lse²

with z the z-loss coefficient (PaLM) and 0 · log 0 = 0: a term whose weight is 0 is 0, also
where log p_j = −inf. An example whose target is ``ignore_index`` has loss 0 and gradient 0,
whatever its logits. ``reduction="mean"`` divides the sum by Σ w_y over the examples not
ignored (index targets; 0 when all are ignored) or by the number of examples (probability
targets), as PyTorch does; ``base`` divides by ln(base). The gradient is autograd's.

This module imports nothing from crossent's implementation: it is the independent oracle
every backend is tested against (tests/test_conformance.py).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

Reduction = Literal["none", "sum", "mean"]


def cross_entropy_reference(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    base: float = math.e,
) -> torch.Tensor:
    """The loss of :func:`crossent.torch.cross_entropy`, computed in plain float64 PyTorch.

    The oracle the tests hold every backend to: per example, in nats divided by ln ``base``,

        −Σ_j w_j ((1 − ε) t_j + ε / C) log softmax(x)_j + z · lse(x)²

    with t the one-hot (index) or probability target, 0 · log 0 = 0, and x soft-capped first.
    It shares no code with the implementation it checks. The result is float64.

    Args:
        logits: ``(N, C)``, ``(N, C, d1, ...)`` or ``(C,)``.
        target: class indices ``(N,)`` / ``(N, d1, ...)``, or probabilities of the logits' shape.
        weight: ``(C,)`` class weights w.
        ignore_index: the index target of examples that count for nothing.
        label_smoothing: ε in [0, 1].
        reduction: "mean", "sum" or "none".
        z_loss: z ≥ 0, the weight of lse².
        softcap: s > 0 caps the logits to s · tanh(x / s); None: no cap.
        base: the logarithm's base: e (nats), 2 (bits).

    >>> x = torch.tensor([[2.0, 0.0, -1.0]]); y = torch.tensor([0])
    >>> loss = cross_entropy_reference(x, y, base=2)
    >>> loss.dtype, round(loss.item(), 4)                 # bits, in float64
    (torch.float64, 0.245)
    """
    x = _rows(logits.double())
    classes, eps = x.shape[-1], label_smoothing
    w = torch.ones(classes, dtype=torch.float64) if weight is None else weight.double()
    w = w.to(x.device)
    if target.is_floating_point():
        keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
        t = (1 - eps) * _rows(target.double()) + eps / classes
        denominator = torch.tensor(float(x.shape[0]), dtype=torch.float64)
    else:
        label = target.reshape(-1)
        keep = label != ignore_index
        y = torch.where(keep, label, 0)
        t = (1 - eps) * torch.nn.functional.one_hot(y, classes).double() + eps / classes
        denominator = torch.where(keep, w[y], 0.0).sum()
        x = torch.where(keep[:, None], x, 0.0)  # an ignored row's logits count for nothing
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    lse = torch.logsumexp(x, dim=-1)
    log_p = x - lse[:, None]
    weighted = w * t
    loss = -torch.where(weighted == 0, 0.0, weighted * log_p).sum(dim=-1)  # 0 · log 0 = 0
    loss = torch.where(keep, loss + z_loss * lse**2, 0.0)
    return _reduce(loss, denominator, reduction, logits) / math.log(base)


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    """(N, C, d1, ...) → (N · d1 ·…, C): one row per example, classes last."""
    if tensor.dim() == 1:
        return tensor[None, :]
    return tensor.movedim(1, -1).reshape(-1, tensor.shape[1])


def _reduce(
    loss: torch.Tensor, denominator: torch.Tensor, reduction: Reduction, logits: torch.Tensor
) -> torch.Tensor:
    """Per-example losses in the examples' layout ("none"), summed, or their mean over
    ``denominator`` (0 when it is 0)."""
    if reduction == "none":
        return loss.reshape(logits.shape[:1] + logits.shape[2:] if logits.dim() > 1 else ())
    total = loss.sum()
    if reduction == "sum":
        return total
    return torch.where(denominator == 0, 0.0, total / denominator.to(total.device))
