"""Examples as rows: the layout every backend computes in, and the reductions over rows.

Logits ``(N, C, d1, ...)`` hold N · d1 · … examples of C classes; the backends take them as
rows ``(R, C)`` with unit column stride, index targets as ``(R,)`` int64 and probability
targets as ``(R, C)``. A loss over rows is reduced per *segment*: R rows in ``segments``
equal groups, each reduced apart (one group normally; one per vmapped slice under
``torch.func.vmap``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from crossent._checks import Reduction
from crossent.torch._spec import LossOptions


def example_shape(logits: torch.Tensor) -> torch.Size:
    """The shape of one loss per example: the logits' without the class dimension."""
    return logits.shape[:1] + logits.shape[2:] if logits.dim() > 1 else torch.Size([])


def classes_of(logits: torch.Tensor) -> int:
    """C: the class dimension's size (dimension 1, or 0 for one example ``(C,)``)."""
    return logits.shape[1] if logits.dim() > 1 else logits.shape[0]


def as_rows(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, d1, ...) or (C,) → (N · d1 · …, C) with unit column stride (every kernel reads a
    row's classes one after the other); a view where the layout allows, else a copy."""
    if logits.dim() <= 2:
        rows = logits.reshape(1, -1) if logits.dim() == 1 else logits
    else:
        count = math.prod(example_shape(logits))  # counted: a shard may hold no class
        rows = logits.movedim(1, -1).reshape(count, logits.shape[1])
    if rows.shape[1] > 1 and rows.stride(1) != 1:
        rows = rows.contiguous()
    return rows


def from_rows(rows: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """The inverse of :func:`as_rows`: rows ``(R, C)`` in the logits' ``shape``."""
    if len(shape) <= 2:
        return rows.reshape(shape)
    moved = (shape[0], *shape[2:], shape[1])
    return rows.reshape(moved).movedim(-1, 1)


def target_rows(target: torch.Tensor) -> torch.Tensor:
    """Index targets as ``(R,)`` int64, contiguous (a kernel reads label i at offset i);
    probability targets as rows, like the logits."""
    if target.is_floating_point():
        return as_rows(target)
    return target.reshape(-1).contiguous()


def denominators(target: torch.Tensor, options: LossOptions, segments: int = 1) -> torch.Tensor:
    """What "mean" divides each segment's sum by, ``(segments,)`` float64: Σ w_y over its
    examples not ignored (index targets ``(R,)``), or its number of rows (probability
    targets ``(R, C)``)."""
    rows = target.shape[0]
    if target.is_floating_point():
        return torch.full((segments,), rows / segments, dtype=torch.float64, device=target.device)
    keep = target != options.ignore_index
    if options.weight is None:
        counted = keep.to(torch.float64)
    else:
        safe = torch.where(keep, target, 0)
        weight = options.weight.to(target.device, torch.float64)
        counted = torch.where(keep, weight[safe], 0.0)
    return counted.reshape(segments, -1).sum(dim=1) if rows else counted.new_zeros(segments)


def host_denominator(target: torch.Tensor, options: LossOptions) -> float:
    """:func:`denominators` of one segment of CPU rows, as a number: NumPy reads them where a
    torch op would cost more than a small loss. A label outside the classes counts as the
    nearest class here; the pass refuses it before any loss is returned."""
    if target.is_floating_point():
        return float(target.shape[0])
    labels = target.numpy()
    if options.weight is None:
        return float(labels.size - np.count_nonzero(labels == options.ignore_index))
    kept = labels[labels != options.ignore_index]
    weight = options.weight.detach().to("cpu", torch.float64).numpy()
    return float(np.take(weight, kept, mode="clip").sum())


def host_factor(reduction: Reduction, denominator: float, scale: float) -> float:
    """:func:`grad_factor` as a number, for :func:`host_denominator`'s denominator."""
    if reduction != "mean":
        return scale
    return scale / denominator if denominator else 0.0


def grad_factor(reduction: Reduction, denominator: torch.Tensor, scale: float) -> torch.Tensor:
    """What every row's gradient is multiplied by, 0-d float64: the unit's ``scale``
    (1 / ln base), over the mean's ``denominator`` ``(1,)`` (0 where that is 0)."""
    if reduction != "mean":
        # made on the device (a fill, not a copy from the host: CUDA graphs can capture it)
        return torch.full((), scale, dtype=torch.float64, device=denominator.device)
    return torch.where(denominator == 0, 0.0, scale / denominator).reshape(())


def reduce_rows(
    losses: torch.Tensor, denominator: torch.Tensor | float, reduction: Reduction
) -> torch.Tensor:
    """Row losses ``(R,)`` summed per segment, or their mean over each segment's
    ``denominator`` (0 where it is 0): ``(segments,)``, or 0-d for one segment. "none" keeps
    them as they are. A number as ``denominator`` (:func:`host_denominator`) is one
    segment's."""
    if reduction == "none":
        return losses
    if isinstance(denominator, float):
        total = losses.sum()
        if reduction == "sum":
            return total
        return total.div_(denominator) if denominator else total.zero_()
    segments = denominator.numel()
    total = (
        losses.reshape(segments, -1).sum(dim=1) if losses.numel() else losses.new_zeros(segments)
    )
    if reduction == "mean":
        total = torch.where(denominator == 0, 0.0, total / denominator).to(total.dtype)
    return total[0] if segments == 1 else total
