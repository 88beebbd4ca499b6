"""The cross-entropy loss in plain PyTorch, float64: the readable definition and the test oracle.

For logits x of one example (C classes), capped to s·tanh(x / s) when ``softcap`` = s, with
lse = log Σ_j exp x_j and log p_j = x_j − lse, class weights w (all 1 by default) and label
smoothing ε, the loss of one example in nats is

    index target y:        −(1 − ε) w_y log p_y − (ε / C) Σ_j w_j log p_j   + z · lse²
    probability target t:  −Σ_j w_j t'_j log p_j,  t' = (1 − ε) t + ε / C     + z · lse²

with z the z-loss coefficient (PaLM) and 0 · log 0 = 0. An example whose target is
``ignore_index`` has loss 0 and gradient 0. ``reduction="mean"`` divides the sum by Σ w_y over
the examples not ignored (index targets; 0 when all are ignored) or by the number of examples
(probability targets), as PyTorch does; ``base`` divides by ln(base).
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
    """The loss of ``logits`` ``(N, C)`` or ``(N, C, d1, ...)`` against ``target``, in float64."""
    x = _rows(logits.double())
    classes = x.shape[-1]
    if softcap is not None:
        x = softcap * torch.tanh(x / softcap)
    lse = torch.logsumexp(x, dim=-1)
    log_p = x - lse[:, None]
    w = torch.ones(classes, dtype=torch.float64) if weight is None else weight.double()
    w = w.to(x.device)
    if target.is_floating_point():
        row, denominator = _probability_rows(log_p, _rows(target.double()), w, label_smoothing)
        keep = torch.ones_like(row, dtype=torch.bool)
    else:
        row, keep, denominator = _index_rows(
            log_p, target.reshape(-1), w, ignore_index, label_smoothing
        )
    row = torch.where(keep, row + z_loss * lse**2, 0.0)
    return _reduce(row, denominator, reduction, logits, target) / math.log(base)


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    """(N, C, d1, ...) → (N · d1 ·…, C): one row per example, classes last."""
    if tensor.dim() == 1:
        return tensor[None, :]
    return tensor.movedim(1, -1).reshape(-1, tensor.shape[1])


def _index_rows(
    log_p: torch.Tensor, target: torch.Tensor, w: torch.Tensor, ignore_index: int, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    keep = target != ignore_index
    safe = torch.where(keep, target, 0)
    row = -(1 - eps) * w[safe] * log_p.gather(1, safe[:, None])[:, 0]
    if eps > 0:
        row = row - eps / log_p.shape[-1] * (w * log_p).sum(dim=-1)
    return row, keep, torch.where(keep, w[safe], 0.0).sum()


def _probability_rows(
    log_p: torch.Tensor, target: torch.Tensor, w: torch.Tensor, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    smoothed = (1 - eps) * target + eps / log_p.shape[-1]
    terms = torch.where(smoothed == 0, 0.0, w * smoothed * log_p)  # 0 · log 0 = 0
    return -terms.sum(dim=-1), torch.tensor(float(log_p.shape[0]), dtype=torch.float64)


def _reduce(
    row: torch.Tensor,
    denominator: torch.Tensor,
    reduction: Reduction,
    logits: torch.Tensor,
    target: torch.Tensor,
) -> torch.Tensor:
    """Per-example losses ``row`` in the target's layout ("none"), summed, or their mean over
    ``denominator`` (0 when it is 0), in the losses' dtype."""
    if reduction == "none":
        shape = target.shape if not target.is_floating_point() else _example_shape(logits)
        return row.reshape(shape)
    total = row.sum()
    if reduction == "sum":
        return total
    return torch.where(denominator == 0, 0.0, total / denominator).to(total.dtype)


def _example_shape(logits: torch.Tensor) -> torch.Size:
    """The shape of one loss per example: the logits' without the class dimension."""
    return logits.shape[:1] + logits.shape[2:] if logits.dim() > 1 else torch.Size([])
