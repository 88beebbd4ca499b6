"""One pass over the logits in torch ops: the loss of every row and its gradient, chunk by chunk.

Each chunk of rows (about a million numbers, 4 MB of float32, which stays in the last-level
cache) is read from memory once; the softmax is built in the gradient buffer itself, so
besides the gradient there is no N×C temporary. Chunks are that large because every op costs
a fixed overhead (docs/benchmarks.md, "the CPU loss"): with chunks of 2^18 numbers it was half
the time of a 4096 × 32000 pass.

For one row (classes j, weights w, W = Σ_j w_j, smoothing ε, z-loss z):

    p = softmax(x) (torch's fused kernel),   lse = m − log max_j p_j,   m = max_j x_j

    index target y:  loss = (1 − ε) w_y (lse − x_y) + (ε / C)(W · lse − Σ_j w_j x_j) + z lse²
                     (a term of weight 0 is 0, also where its logit is −inf)
                     ∂loss/∂x_j = p_j ((1 − ε) w_y + (ε / C) W + 2 z lse) − (1 − ε) w_y [j = y]
                                  − (ε / C) w_j
    prob. target t:  with v_j = w_j t'_j, t' = (1 − ε) t + ε / C, V = Σ_j v_j:
                     loss = V · lse − Σ_j v_j x_j + z lse²     (terms with v_j = 0 are 0)
                     ∂loss/∂x_j = p_j (V + 2 z lse) − v_j

With soft-capping x = s · tanh(x_raw / s), the chain rule multiplies by 1 − tanh²(x_raw / s).
A row whose target is ``ignore_index`` gets loss 0 and gradient exactly 0, whatever its logits.

On a shard of the classes (vocabulary parallelism, :mod:`crossent.torch.distributed`) the same
two halves run on a slice of every row: :func:`softmax_half` gives the local log-sum-exp and
the row sums over classes (x_y, Σ_j w_j x_j, Σ_j v_j x_j, V), which the shard combines over
all ranks, and :func:`finish_half` rescales the local softmax by exp(lse_local − lse) into
the global one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from crossent.torch._pool import on_threads
from crossent.torch._spec import LossOptions, compute_dtype

CHUNK_ELEMENTS = 1 << 20  # numbers per chunk and thread: 4 MB of float32
CHUNK_ELEMENTS_ELSEWHERE = 1 << 26  # on a GPU (sharded, or without Triton): fewer launches
Sums = tuple[torch.Tensor, ...]  # (r, 1) each: sums over a row's classes that the loss needs


class Shard(Protocol):
    """This process holds classes ``start : start + width`` of ``classes``; :meth:`combine`
    joins what every process found on its slice."""

    @property
    def start(self) -> int:
        """This shard's first class."""
        ...

    @property
    def classes(self) -> int:
        """The classes of all shards."""
        ...

    @property
    def widest(self) -> int:
        """The most classes any shard holds: chunks are sized by it, so alike everywhere."""
        ...

    def combine(self, lse: torch.Tensor, sums: Sums) -> tuple[torch.Tensor, torch.Tensor, Sums]:
        """Each row's log-sum-exp over all classes, exp(lse_local − lse) and the total sums,
        from this shard's log-sum-exp ``lse`` (r, 1) and ``sums``."""
        ...

    def add_up(self, tensor: torch.Tensor) -> None:
        """Replace ``tensor`` by its sum over all shards."""
        ...


def loss_and_grad(
    logits: torch.Tensor,
    target: torch.Tensor,
    options: LossOptions,
    grad_scale: torch.Tensor | float | None,
    grad: torch.Tensor | None,
    lse: torch.Tensor | None = None,
    *,
    known_lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Row losses ``(R,)`` in nats for logits ``(R, C)``; fills ``grad`` ``(R, C)`` if given.

    ``grad_scale`` multiplies the gradient: a number or 0-d tensor (1 / denominator for a
    mean) or one factor per row ``(R,)`` (an upstream gradient). ``lse`` ``(R,)``, if given,
    receives each row's log-sum-exp. ``grad`` may be ``logits`` itself: the gradient then
    overwrites them.
    ``known_lse`` is not used: the pass computes each row's log-sum-exp again, in the cache.
    The computation runs in :func:`~crossent.torch._spec.compute_dtype`.
    """
    rows, classes = logits.shape
    compute = compute_dtype(logits.dtype)
    weight = weight_in(options, logits.device, compute)
    grad_scale = as_factor(grad_scale, logits.device)
    losses = torch.empty(rows, dtype=compute, device=logits.device)
    step = chunk_rows(classes, logits.device)

    def run(start: int) -> None:
        stop = min(rows, start + step)
        out = None if grad is None else grad[start:stop]
        half = softmax_half(logits[start:stop], target[start:stop], options, weight, out, None)
        losses[start:stop] = finish_half(
            half, half.lse, half.part.sums, None, options, rows_of(grad_scale, start, stop), out
        )
        if lse is not None:
            lse[start:stop] = half.lse[:, 0]

    on_threads(run, range(0, rows, step), logits.device)
    return losses


def as_factor(grad_scale: torch.Tensor | float | None, device: torch.device) -> torch.Tensor | None:
    """The gradient's factor as a tensor: a number made a 0-d float64 tensor on ``device``."""
    if isinstance(grad_scale, float | int):
        return torch.full((), float(grad_scale), dtype=torch.float64, device=device)
    return grad_scale


def weight_in(
    options: LossOptions, device: torch.device, dtype: torch.dtype
) -> torch.Tensor | None:
    """The class weights on ``device`` in ``dtype`` (None without weights)."""
    return None if options.weight is None else options.weight.to(device, dtype)


def chunk_rows(classes: int, device: torch.device) -> int:
    """Rows per chunk: :data:`CHUNK_ELEMENTS` numbers on the CPU (the last-level cache),
    :data:`CHUNK_ELEMENTS_ELSEWHERE` on a GPU (each op is a kernel launch); at least one row."""
    elements = CHUNK_ELEMENTS if device.type == "cpu" else CHUNK_ELEMENTS_ELSEWHERE
    return max(1, elements // max(classes, 1))


def rows_of(scale: torch.Tensor | None, start: int, stop: int) -> torch.Tensor | None:
    """The gradient factor of rows ``start:stop``: the one factor of all rows (0-d, or None),
    or those rows' own."""
    return scale if scale is None or scale.dim() == 0 else scale[start:stop]


@dataclass(frozen=True)
class _Target:
    """What a chunk's targets contribute, read from the logits before they are overwritten."""

    keep: torch.Tensor  # (r,) rows not ignored
    sums: Sums  # sums over the row's classes (partial on a shard)
    loss_at: Callable[[torch.Tensor, Sums], torch.Tensor]  # lse (r, 1), sums → loss (r,)
    coef: Callable[[Sums], torch.Tensor | float]  # ∂loss/∂x_j = p_j · coef − (``subtract``)
    subtract: Callable[[torch.Tensor, torch.Tensor], object]  # (gradient, row factor (r, 1))


@dataclass
class Half:
    """A chunk after its softmax: what the loss and the gradient still need."""

    part: _Target
    e: torch.Tensor | None  # p = softmax(x) (local on a shard), None when no gradient is asked
    lse: torch.Tensor  # (r, 1) log-sum-exp (of this slice on a shard)
    capped: torch.Tensor | None  # tanh(x_raw / s) with soft-capping
    compute: torch.dtype


def softmax_half(
    x_in: torch.Tensor,
    target: torch.Tensor,
    options: LossOptions,
    weight: torch.Tensor | None,
    out: torch.Tensor | None,
    shard: Shard | None,
) -> Half:
    """The first half of a chunk: its targets' sums, its softmax (into ``out`` where the
    dtypes allow) and its log-sum-exp."""
    compute = compute_dtype(x_in.dtype)
    x = x_in.to(compute)  # the same memory when the dtype is already right
    capped = None
    if options.softcap is not None:
        capped = torch.tanh(x / options.softcap)
        x = capped * options.softcap
    reader = _probability_target if target.is_floating_point() else _index_target
    part = reader(x, target, options, weight, shard)  # before anything can overwrite x
    m = _row_max(x)
    # p = softmax(x), built where the gradient goes when the dtypes allow and it is not x itself
    writable = out is not None and out.dtype == compute and out.data_ptr() != x.data_ptr()
    e = torch.softmax(x, dim=1, out=out) if writable else torch.softmax(x, dim=1)
    # lse = m − log max_j p_j: the largest p is at least 1 / C, so its log never underflows
    lse = m - _row_max(e).log()
    if shard is not None:  # a slice of −inf logits: no local softmax (torch's is NaN)
        empty = m == -math.inf
        if bool(empty.any()):
            e.masked_fill_(empty, 0.0)
            lse = lse.masked_fill(empty, -math.inf)
    return Half(part, None if out is None else e, lse, capped, compute)


def finish_half(
    half: Half,
    lse: torch.Tensor,
    sums: Sums,
    rescale: torch.Tensor | None,
    options: LossOptions,
    scale: torch.Tensor | None,
    out: torch.Tensor | None,
) -> torch.Tensor:
    """The second half: the row losses from the log-sum-exp and sums of all classes, and the
    gradient into ``out``; ``rescale`` = exp(lse_local − lse) turns a shard's softmax into
    the softmax over all classes."""
    part, e, compute = half.part, half.e, half.compute
    loss = part.loss_at(lse, sums)
    coef = part.coef(sums)
    if options.z_loss:
        loss = loss + options.z_loss * lse[:, 0] ** 2
        coef = coef + 2 * options.z_loss * lse
    loss = torch.where(part.keep, loss, 0.0)
    if out is None or e is None:
        return loss
    factor = part.keep.to(compute)[:, None]
    if scale is not None:
        factor = factor * scale.to(compute).reshape(-1, 1)  # one factor, or one per row
    e.mul_(coef * factor if rescale is None else coef * factor * rescale)  # p_j · coef, scaled
    part.subtract(e, factor)
    if half.capped is not None:
        e.mul_(1 - half.capped * half.capped)
    if not bool(part.keep.all()):
        e.masked_fill_(~part.keep[:, None], 0.0)  # also clears a NaN row of all −inf logits
    if e is not out:
        out.copy_(e)
    return loss


def _index_target(
    x: torch.Tensor,
    target: torch.Tensor,
    options: LossOptions,
    weight: torch.Tensor | None,
    shard: Shard | None,
) -> _Target:
    eps = options.label_smoothing
    classes = x.shape[1] if shard is None else shard.classes
    keep = target != options.ignore_index
    safe = torch.where(keep, target, 0)[:, None]
    w_y: torch.Tensor | float = weight[safe] if weight is not None else 1.0
    here, on_slice = safe, None
    if shard is not None:  # labels on this slice of the classes; elsewhere x_y is summed as 0
        on_slice = (safe >= shard.start) & (safe < shard.start + x.shape[1])
        here = torch.where(on_slice, safe - shard.start, 0)
    if on_slice is None:
        x_y = x.gather(1, here)
    else:  # a shard may hold no class at all
        x_y = torch.where(on_slice, x.gather(1, here), 0) if x.shape[1] else x.new_zeros(safe.shape)
    local_weight = None if weight is None else weight_slice(weight, shard, x.shape[1])
    total_weight = float(classes) if weight is None else weight.sum()
    sums: Sums = (x_y,)
    if eps:  # Σ_j w_j x_j, where a class of weight 0 adds 0 even at x_j = −inf
        if local_weight is None:
            sums += (x.sum(dim=1, keepdim=True),)
        else:
            sums += ((torch.where(local_weight == 0, 0.0, x) @ local_weight)[:, None],)
    label = (1 - eps) * w_y  # the label's weight in the loss: a number without class weights

    def loss_at(lse: torch.Tensor, sums: Sums) -> torch.Tensor:
        loss = (lse - sums[0])[:, 0]  # each factor below only where it is not 1: ops cost time
        if isinstance(label, torch.Tensor):  # a label of weight 0 adds 0, even if x_y = −inf
            loss = torch.where(label[:, 0] == 0, 0.0, label[:, 0] * loss)
        elif label != 1:
            loss = label * loss if label else torch.zeros_like(loss)
        if eps:
            loss = loss + eps / classes * (total_weight * lse - sums[1])[:, 0]
        return loss

    def subtract(e: torch.Tensor, factor: torch.Tensor) -> None:
        at_label = factor if on_slice is None else factor * on_slice
        if e.shape[1]:
            e.scatter_add_(1, here, -label * at_label)
        if eps:
            e.sub_(eps / classes * factor * (local_weight if local_weight is not None else 1.0))

    coef = label + eps / classes * total_weight  # a number without class weights
    return _Target(keep, sums, loss_at, lambda sums: coef, subtract)


def _probability_target(
    x: torch.Tensor,
    target: torch.Tensor,
    options: LossOptions,
    weight: torch.Tensor | None,
    shard: Shard | None,
) -> _Target:
    eps = options.label_smoothing
    classes = x.shape[1] if shard is None else shard.classes
    v = target.to(x.dtype)
    if eps:
        v = (1 - eps) * v + eps / classes
    if weight is not None:
        v = v * weight_slice(weight, shard, x.shape[1])
    sums = (
        v.sum(dim=1, keepdim=True),  # V
        torch.where(v == 0, 0.0, v * x).sum(dim=1, keepdim=True),  # Σ v_j x_j, 0 · (−inf) = 0
    )
    keep = torch.ones(x.shape[0], dtype=torch.bool, device=x.device)
    return _Target(
        keep,
        sums,
        lambda lse, sums: (sums[0] * lse - sums[1])[:, 0],
        lambda sums: sums[0],
        lambda e, factor: e.sub_(v * factor),
    )


def _row_max(x: torch.Tensor) -> torch.Tensor:
    """max_j x_j of each row, (r, 1); −inf for rows of no classes (a shard's empty slice)."""
    if x.shape[1] == 0:
        return x.new_full((x.shape[0], 1), -math.inf)
    return x.amax(dim=1, keepdim=True)


def weight_slice(weight: torch.Tensor, shard: Shard | None, width: int) -> torch.Tensor:
    """The class weights of the ``width`` classes the logits hold."""
    if shard is None:
        return weight
    return weight[shard.start : shard.start + width]
