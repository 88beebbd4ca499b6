"""One pass over the logits on the CPU: the loss of every row and its gradient, chunk by chunk.

Each chunk of rows (about a million numbers, 4 MB of float32, which stays in the last-level
cache) is read from memory once; the softmax is built in the gradient buffer itself, so
besides the gradient there is no N×C temporary. Chunks are that large because each of the
two dozen ops per chunk costs about 20 µs on a small VM: at 2^18 numbers that overhead was
half the time of a 4096 × 32000 pass.

For one row (classes j, weights w, W = Σ_j w_j, smoothing ε, z-loss z):

    p = softmax(x) (torch's fused kernel),   lse = m − log max_j p_j,   m = max_j x_j

    index target y:  loss = (1 − ε) w_y (lse − x_y) + (ε / C)(W · lse − Σ_j w_j x_j) + z lse²
                     ∂loss/∂x_j = p_j ((1 − ε) w_y + (ε / C) W + 2 z lse) − (1 − ε) w_y [j = y]
                                  − (ε / C) w_j
    prob. target t:  with v_j = w_j t'_j, t' = (1 − ε) t + ε / C, V = Σ_j v_j:
                     loss = V · lse − Σ_j v_j x_j + z lse²     (terms with v_j = 0 are 0)
                     ∂loss/∂x_j = p_j (V + 2 z lse) − v_j

With soft-capping x = s · tanh(x_raw / s), the chain rule multiplies by 1 − tanh²(x_raw / s).
A row whose target is ``ignore_index`` gets loss 0 and gradient exactly 0, whatever its logits.

On a shard of the classes (vocabulary parallelism, :mod:`crossent.torch.distributed`) the same
pass runs on a slice of every row: the local log-sum-exp and the row sums over classes
(x_y, Σ_j w_j x_j, Σ_j v_j x_j, V) are partial, the shard combines them over all ranks, and the
local softmax is rescaled by exp(lse_local − lse) into the global one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import torch

CHUNK_ELEMENTS = 1 << 20  # numbers per chunk and thread: 4 MB of float32
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


@dataclass(frozen=True)
class Options:
    """The loss's options, shared by every implementation."""

    weight: torch.Tensor | None  # (C,): one per class of all shards
    ignore_index: int
    label_smoothing: float
    z_loss: float
    softcap: float | None
    shard: Shard | None = None  # logits hold this slice of the classes

    def classes(self, local: int) -> int:
        """All classes, for logits that hold ``local`` of them."""
        return local if self.shard is None else self.shard.classes


def loss_and_grad(
    logits: torch.Tensor,
    target: torch.Tensor,
    options: Options,
    grad_scale: torch.Tensor | None,
    grad: torch.Tensor | None,
    lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Row losses ``(R,)`` in nats for logits ``(R, C)``; fills ``grad`` ``(R, C)`` if given.

    ``grad_scale`` multiplies the gradient: a 0-d tensor (1 / denominator for a mean) or one
    factor per row ``(R,)`` (an upstream gradient). ``lse`` ``(R,)``, if given, receives each
    row's log-sum-exp. ``grad`` may be ``logits`` itself: the gradient then overwrites them.
    The computation runs in float64 for float64 logits and in float32 otherwise.
    """
    rows, classes = logits.shape
    compute = torch.float64 if logits.dtype == torch.float64 else torch.float32
    losses = torch.empty(rows, dtype=compute, device=logits.device)
    weight = None if options.weight is None else options.weight.to(logits.device, compute)
    shard = options.shard
    step = max(1, CHUNK_ELEMENTS // max(classes if shard is None else shard.widest, 1))

    @torch.no_grad()  # grad mode is per thread: worker threads must not record a graph
    def run(start: int) -> None:
        stop = min(rows, start + step)
        out = None if grad is None else grad[start:stop]
        losses[start:stop], row_lse = _chunk(
            logits[start:stop], target[start:stop], options, weight,
            rows_of(grad_scale, start, stop), out, compute,
        )  # fmt: skip
        if lse is not None:
            lse[start:stop] = row_lse

    starts = range(0, rows, step)
    threads = torch.get_num_threads()
    if logits.device.type != "cpu" or threads == 1 or shard is not None:
        for start in starts:  # a shard combines each chunk with the others: in order
            run(start)
        return losses
    # One chunk per thread, each op single-threaded: no OpenMP barrier per op, which costs
    # 10× when another process holds a core (torch ops release the GIL, so threads overlap).
    # A single chunk runs on one thread too: even a 32 × 10 softmax waited milliseconds at
    # OpenMP's barrier while another process was busy.
    torch.set_num_threads(1)
    try:
        if len(starts) == 1:
            run(0)
        else:
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(run, starts))
    finally:
        torch.set_num_threads(threads)
    return losses


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


def _chunk(
    x_in: torch.Tensor,
    target: torch.Tensor,
    options: Options,
    weight: torch.Tensor | None,
    scale: torch.Tensor | None,
    out: torch.Tensor | None,
    compute: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk's row losses and log-sum-exps; its gradient into ``out`` if given."""
    x = x_in.to(compute)  # the same memory when the dtype is already right
    capped = None
    if options.softcap is not None:
        capped = torch.tanh(x / options.softcap)
        x = capped * options.softcap
    reader = _probability_target if target.is_floating_point() else _index_target
    part = reader(x, target, options, weight)  # before anything can overwrite x
    m = _row_max(x)
    # p = softmax(x), built where the gradient goes when the dtypes allow and it is not x itself
    writable = out is not None and out.dtype == compute and out.data_ptr() != x.data_ptr()
    e = torch.softmax(x, dim=1, out=out) if writable else torch.softmax(x, dim=1)
    # lse = m − log max_j p_j: the largest p is at least 1 / C, so its log never underflows
    lse = m - _row_max(e).log()
    sums, rescale = part.sums, None
    if options.shard is not None:
        lse, rescale, sums = _combine(options.shard, e, m, lse, sums)
    loss = part.loss_at(lse, sums)
    coef = part.coef(sums)
    if options.z_loss:
        loss = loss + options.z_loss * lse[:, 0] ** 2
        coef = coef + 2 * options.z_loss * lse
    loss = torch.where(part.keep, loss, 0.0)
    if out is None:
        return loss, lse[:, 0]
    factor = part.keep.to(compute)[:, None]
    if scale is not None:
        factor = factor * scale.to(compute).reshape(-1, 1)  # one factor, or one per row
    e.mul_(coef * factor if rescale is None else coef * factor * rescale)  # p_j · coef, scaled
    part.subtract(e, factor)
    if capped is not None:
        e.mul_(1 - capped * capped)
    if not bool(part.keep.all()):
        e.masked_fill_(~part.keep[:, None], 0.0)  # also clears a NaN row of all −inf logits
    if e is not out:
        out.copy_(e)
    return loss, lse[:, 0]


def _combine(
    shard: Shard, e: torch.Tensor, m: torch.Tensor, lse: torch.Tensor, sums: Sums
) -> tuple[torch.Tensor, torch.Tensor, Sums]:
    """The shard's global log-sum-exp and sums, and the factor exp(lse_local − lse) that turns
    the local softmax ``e`` into the global one. A slice of −inf logits has no local softmax
    (torch's is NaN): its probabilities are 0 and its local log-sum-exp −inf."""
    empty = m == -math.inf
    if bool(empty.any()):
        e.masked_fill_(empty, 0.0)
        lse = lse.masked_fill(empty, -math.inf)
    return shard.combine(lse, sums)


def _index_target(
    x: torch.Tensor, target: torch.Tensor, options: Options, weight: torch.Tensor | None
) -> _Target:
    eps, classes, shard = options.label_smoothing, options.classes(x.shape[1]), options.shard
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
    local_weight = None if weight is None else _on_slice(weight, shard, x.shape[1])
    total_weight = float(classes) if weight is None else weight.sum()
    sums: Sums = (x_y,)
    if eps:  # Σ_j w_j x_j
        sums += ((x.sum(dim=1) if local_weight is None else x @ local_weight)[:, None],)

    def loss_at(lse: torch.Tensor, sums: Sums) -> torch.Tensor:
        loss = (lse - sums[0])[:, 0]  # each factor below only where it is not 1: ops cost ~10 µs
        if weight is not None:
            loss = w_y[:, 0] * loss  # type: ignore[index]
        if eps:
            loss = (1 - eps) * loss + eps / classes * (total_weight * lse - sums[1])[:, 0]
        return loss

    def subtract(e: torch.Tensor, factor: torch.Tensor) -> None:
        at_label = factor if on_slice is None else factor * on_slice
        if e.shape[1]:
            e.scatter_add_(1, here, -(1 - eps) * w_y * at_label)
        if eps:
            e.sub_(eps / classes * factor * (local_weight if local_weight is not None else 1.0))

    coef = (1 - eps) * w_y + eps / classes * total_weight  # a number without class weights
    return _Target(keep, sums, loss_at, lambda sums: coef, subtract)


def _probability_target(
    x: torch.Tensor, target: torch.Tensor, options: Options, weight: torch.Tensor | None
) -> _Target:
    eps, classes, shard = options.label_smoothing, options.classes(x.shape[1]), options.shard
    v = target.to(x.dtype)
    if eps:
        v = (1 - eps) * v + eps / classes
    if weight is not None:
        v = v * _on_slice(weight, shard, x.shape[1])
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


def _on_slice(weight: torch.Tensor, shard: Shard | None, width: int) -> torch.Tensor:
    """The class weights of the ``width`` classes the logits hold."""
    if shard is None:
        return weight
    return weight[shard.start : shard.start + width]
