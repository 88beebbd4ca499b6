"""The torch-ops pass on a shard of the classes: each rank's slice of every row, combined.

The rows are taken a group of chunks at a time: the softmax half of each chunk (on the thread
pool), one combination of the whole group with the other shards (one MAX and one SUM
all-reduce, whose latency dwarfs a few numbers per row), then each chunk's losses and
gradient. A group is every row, unless the chunks keep chunk-sized state until they are
finished (probability targets, soft-capping, logits of a narrower dtype or a gradient written
over them): then as many chunks as hold :data:`GROUP_BYTES` of it. Group and chunk sizes
depend only on what every shard knows alike (the caller, not this rank's data), so all shards
meet at the same collectives; every rank must ask for the same gradients.
"""

from __future__ import annotations

import torch

from crossent.torch._pool import on_threads
from crossent.torch._spec import LossOptions, compute_dtype
from crossent.torch._torch_ops import (
    Half,
    Shard,
    as_factor,
    chunk_rows,
    finish_half,
    rows_of,
    softmax_half,
    weight_in,
)

GROUP_BYTES = 64 << 20  # on the CPU: state held by the chunks that are combined at once
GROUP_BYTES_ELSEWHERE = 1 << 30


def loss_and_grad(
    logits: torch.Tensor,
    target: torch.Tensor,
    options: LossOptions,
    grad_scale: torch.Tensor | float | None,
    grad: torch.Tensor | None,
    lse: torch.Tensor | None = None,
    *,
    shard: Shard,
    known_lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`crossent.torch._torch_ops.loss_and_grad` of a shard's logits ``(R, C_r)``,
    combined with the other shards': every row's loss over all classes, this slice's gradient
    and the rows' log-sum-exps over all classes."""
    rows = logits.shape[0]
    compute = compute_dtype(logits.dtype)
    weight = weight_in(options, logits.device, compute)
    grad_scale = as_factor(grad_scale, logits.device)
    step = chunk_rows(shard.widest, logits.device)
    group = _group_rows(logits, target, options, grad, shard, step)
    gradient = (lambda at: None) if grad is None else (lambda at: grad[at])

    def softmax(at: slice) -> Half:
        return softmax_half(logits[at], target[at], options, weight, gradient(at), shard)

    def combined(spans: list[slice]) -> tuple[torch.Tensor, torch.Tensor]:
        """One group of consecutive chunks: its losses and log-sum-exps."""
        halves = on_threads(softmax, spans, logits.device)
        local = torch.cat([half.lse for half in halves])
        columns = zip(*(half.part.sums for half in halves), strict=True)
        total, rescale, sums = shard.combine(local, tuple(torch.cat(c) for c in columns))
        first = spans[0].start

        def finish(span: tuple[slice, Half]) -> torch.Tensor:
            at, half = span
            mine = slice(at.start - first, at.stop - first)  # in the group's rows
            return finish_half(
                half, total[mine], tuple(t[mine] for t in sums), rescale[mine], options,
                rows_of(grad_scale, at.start, at.stop), gradient(at),
            )  # fmt: skip

        losses = on_threads(finish, list(zip(spans, halves, strict=True)), logits.device)
        return torch.cat(losses), total[:, 0]

    losses = torch.empty(rows, dtype=compute, device=logits.device)
    for first in range(0, rows, group):
        these = slice(first, min(rows, first + group))
        spans = [slice(a, min(rows, a + step)) for a in range(first, these.stop, step)]
        losses[these], row_lse = combined(spans)
        if lse is not None:
            lse[these] = row_lse
    return losses


def _group_rows(
    logits: torch.Tensor,
    target: torch.Tensor,
    options: LossOptions,
    grad: torch.Tensor | None,
    shard: Shard,
    step: int,
) -> int:
    """Rows combined at once: every row, unless chunks hold chunk-sized state until then."""
    compute = compute_dtype(logits.dtype)
    # what every rank knows alike: not data pointers (every empty slice's is 0), nor whether
    # this rank asked for a gradient in another dtype (a softmax held apart either way)
    apart = logits.dtype != compute or grad is logits
    held = sum((target.is_floating_point(), options.softcap is not None, apart))
    per_row = held * shard.widest * torch.finfo(compute).bits // 8
    budget = GROUP_BYTES if logits.device.type == "cpu" else GROUP_BYTES_ELSEWHERE
    rows = logits.shape[0]
    return max(rows, 1) if not per_row else max(1, budget // (per_row * step)) * step
