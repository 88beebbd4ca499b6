"""Vocabulary-parallel cross entropy: each process holds a contiguous slice of the classes.

With P processes, rank r holds the logits of classes s_r : s_r + C_r of every row (and, for the
linear form, the matching rows of the head's weight and bias). The loss needs only three kinds
of row statistics over all classes, which the ranks combine with two all-reduces for a whole
group of rows — every row, unless the chunks of the pass must keep chunk-sized state until
then (Megatron-LM's scheme, extended to every option of the loss):

    M = max_r lse_r                               all-reduce MAX, 1 number per row
    S = Σ_r exp(lse_r − M),  Σ_r x_y,  (Σ_r Σ_j w_j x_j | Σ_r V_r, Σ_r Σ_j v_j x_j)
                                                  all-reduce SUM, 2 or 3 numbers per row
    lse = M + log S

where lse_r is the log-sum-exp of rank r's slice. Each rank then has the loss of every row and
the gradient of its own logits, p_j = exp(x_j − lse) times the same factors as on one process,
without any communication in the backward. So a step moves about 3–4 numbers per row and
all-reduce instead of the (P − 1)/P · C logits per row that gathering them would.

The linear form multiplies out locally too: ∂W_r = G_rᵀ h and ∂b_r = Σ G_r stay on their
rank, and only ∂h = Σ_r G_r W_r is summed over the ranks (one all-reduce of N × D numbers).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist

from crossent._checks import Reduction
from crossent.torch._head_loss import check_head, head_loss_of
from crossent.torch._head_pass import Head, HeadPlan
from crossent.torch._logits_loss import check_logits, loss_of
from crossent.torch._spec import LossOptions, with_options_doc
from crossent.torch._torch_ops import Sums

_Function = TypeVar("_Function", bound=Callable[..., Any])


def _not_compiled(function: _Function) -> _Function:
    """Run ``function`` eagerly under torch.compile: it talks to the other ranks in the
    middle of its pass, which is no graph to compile. ``torch.compiler.disable`` is applied
    at the first call, not at import: it imports torch._dynamo (over a second)."""
    eager: list[Callable[..., Any]] = []

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        if not eager:
            eager.append(torch.compiler.disable(function))  # type: ignore[no-untyped-call]
        return eager[0](*args, **kwargs)

    return cast(_Function, call)


@dataclass(frozen=True)
class ClassShard:
    """Classes ``start : start + width`` of ``classes``, held by this rank of ``group``."""

    start: int
    width: int
    classes: int  # over all ranks
    widest: int  # the most classes any rank holds
    group: Any  # a torch.distributed ProcessGroup, or None for the default group

    def combine(self, lse: torch.Tensor, sums: Sums) -> tuple[torch.Tensor, torch.Tensor, Sums]:
        """Each row's log-sum-exp over all ranks, exp(lse_local − lse), and the sums' totals.

        The local log-sum-exps are shifted by their maximum over the ranks before they are
        exponentiated, so no rank's sum overflows; a row that is −inf on every rank keeps
        log-sum-exp −inf (its loss is then NaN, as on one process, unless it is ignored).
        """
        top = lse.clone()
        dist.all_reduce(top, op=dist.ReduceOp.MAX, group=self.group)
        top = torch.where(torch.isfinite(top), top, 0.0)
        packed = torch.cat([torch.exp(lse - top), *sums], dim=1)
        dist.all_reduce(packed, group=self.group)
        total = top + packed[:, :1].log()
        totals = tuple(packed[:, k : k + 1] for k in range(1, packed.shape[1]))
        return total, torch.exp(lse - total), totals

    def add_up(self, tensor: torch.Tensor) -> None:
        """Replace ``tensor`` by its sum over the ranks of the group."""
        dist.all_reduce(tensor, group=self.group)


def _unweighted(options: LossOptions) -> LossOptions:
    """What each rank can check alone, before the first collective (a rank that raised after
    it would leave the others waiting there): the options without the class weights, which
    are checked after it against all classes (they are the same on every rank, so every rank
    raises alike)."""
    return replace(options, weight=None)


def class_shard(local_classes: int, rows: int, device: torch.device, group: Any) -> ClassShard:
    """This rank's slice of the classes, from every rank's count (one small all-gather).

    Checks that the process group exists and that every rank holds the same number of rows.
    """
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "vocabulary-parallel losses need torch.distributed: call "
            "torch.distributed.init_process_group first (or run under "
            "crossent.torch.distributed.launch or torchrun)"
        )
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    mine = torch.tensor([local_classes, rows], dtype=torch.int64, device=device)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine, group=group)
    widths, row_counts = zip(*(t.tolist() for t in every), strict=True)
    if len(set(row_counts)) > 1:
        raise ValueError(
            "every rank must hold the logits of the same rows; rows per rank: "
            + ", ".join(f"rank {r}: {n}" for r, n in enumerate(row_counts))
        )
    if max(widths) == 0:
        raise ValueError("the ranks hold no classes at all: every slice of the logits is empty")
    return ClassShard(sum(widths[:rank]), local_classes, sum(widths), max(widths), group)


@_not_compiled
def vocab_parallel_cross_entropy(
    local_logits: torch.Tensor,
    target: torch.Tensor,
    *,
    group: Any = None,
    weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    base: float = math.e,
) -> torch.Tensor:
    """:func:`crossent.torch.cross_entropy` of logits whose classes are split over the ranks.

    Every rank of ``group`` calls this with the same rows and targets and its own contiguous
    slice of the classes, in rank order (rank 0 holds the first classes; slices may differ in
    width, even be empty). Every rank gets the same loss, equal to the single-process loss of
    the concatenated logits up to float rounding, with the same options and edge cases; the
    gradient of each rank's logits stays on that rank.

    Args:
        local_logits: ``(N, C_r)`` or ``(N, C_r, d1, ...)``, this rank's classes.
        target: class indices over *all* classes ``(N,)`` / ``(N, d1, ...)``, the same on every
            rank; or this rank's slice of probability targets, the shape of ``local_logits``.
        group: the process group of the shards (default: the whole world).
        {options}

    ``weight`` is ``(C,)`` over all classes, the same on every rank. The loss is in nats unless
    ``base`` says otherwise, as :func:`crossent.torch.cross_entropy`'s. On one rank it is that
    loss (a process group of one process, in-process):

    >>> import torch.distributed as dist
    >>> from crossent.torch import cross_entropy
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> logits, target = torch.randn(4, 10), torch.tensor([1, 5, 9, 0])
    >>> loss = vocab_parallel_cross_entropy(logits, target, label_smoothing=0.1)
    >>> bool(torch.isclose(loss, cross_entropy(logits, target, label_smoothing=0.1)))
    True
    >>> dist.destroy_process_group()

    On several ranks, rank r passes ``logits[:, start_r : start_r + C_r]`` and the same
    ``target``: see docs/distributed.md.
    """
    shape = local_logits.shape
    classes = shape[1] if len(shape) > 1 else shape[0]
    rows = shape[0] * math.prod(shape[2:]) if len(shape) > 1 else 1
    options = LossOptions(weight, ignore_index, label_smoothing, z_loss, softcap, reduction, base)
    check_logits(local_logits, target, _unweighted(options))
    shard = class_shard(classes, rows, local_logits.device, group)
    return loss_of(local_logits, target, options, shard=shard)


@_not_compiled
def vocab_parallel_linear_cross_entropy(
    hidden: torch.Tensor,
    local_weight: torch.Tensor,
    target: torch.Tensor,
    *,
    local_bias: torch.Tensor | None = None,
    group: Any = None,
    class_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    base: float = math.e,
    chunk_size: int | None = None,
    weight_grad_dtype: torch.dtype | None = torch.float32,
    return_lse: bool = False,
) -> Any:
    """:func:`crossent.torch.linear_cross_entropy` with the head's classes split over the ranks.

    Every rank holds the same ``hidden`` rows and targets and the rows ``local_weight``
    ``(C_r, D)`` (and ``local_bias`` ``(C_r,)``) of its contiguous slice of the classes, in rank
    order. Chunks of rows are computed, combined and turned into gradients as on one process
    (never more than one chunk of logits); the weight's and bias's gradients stay local and the
    hidden rows' gradient is summed over the ranks, so every rank gets the full ∂h.
    ``class_weight`` is ``(C,)`` over all classes; probability targets are this rank's slice.
    The chunked mode only: ``low_memory`` is a single-process mode.

    Args:
        hidden: ``(N, D)`` or ``(..., D)``, the same rows on every rank.
        local_weight: ``(C_r, D)``, this rank's rows of the head's weight.
        target: class indices over all classes ``(N,)`` / ``(...)``, the same on every rank;
            or this rank's slice of probability targets ``(..., C_r)``.
        local_bias: ``(C_r,)``, this rank's slice of the bias, or None.
        group: the process group of the shards (default: the whole world).
        class_weight: ``(C,)`` class weights of all classes, ``weight`` below.
        {options}
        chunk_size, weight_grad_dtype, return_lse: as in
            :func:`crossent.torch.linear_cross_entropy`.

    >>> import torch.distributed as dist
    >>> from crossent.torch import linear_cross_entropy
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> h, w, y = torch.randn(6, 4), torch.randn(5, 4), torch.tensor([0, 1, 2, 3, 4, 0])
    >>> loss = vocab_parallel_linear_cross_entropy(h, w, y, chunk_size=4)   # one rank: all of w
    >>> bool(torch.isclose(loss, linear_cross_entropy(h, w, y)))
    True
    >>> dist.destroy_process_group()
    """
    rows = math.prod(hidden.shape[:-1])
    options = LossOptions(
        class_weight, ignore_index, label_smoothing, z_loss, softcap, reduction, base
    )
    head = Head(hidden, local_weight, local_bias, target)
    plan = HeadPlan(chunk_size, False, weight_grad_dtype)
    check_head(head, _unweighted(options))
    shard = class_shard(local_weight.shape[0], rows, hidden.device, group)
    loss, lse = head_loss_of(head, options, plan, shard)
    return (loss, lse) if return_lse else loss


with_options_doc(vocab_parallel_cross_entropy)
with_options_doc(vocab_parallel_linear_cross_entropy)
