"""One pass over the logits on the CPU: the loss of every row and its gradient, chunk by chunk.

Each chunk of rows (about a million numbers, 4 MB of float32, which stays in the last-level
cache) is read from memory once; the softmax is built in the gradient buffer itself, so
besides the gradient there is no N×C temporary. Chunks are that large because each of the
two dozen ops per chunk costs about 20 µs on a small VM: at 2^18 numbers that overhead was
half the time of a 4096 × 32000 pass.

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
pass runs on a slice of every row: the local log-sum-exp and the row sums over classes
(x_y, Σ_j w_j x_j, Σ_j v_j x_j, V) are partial, the shard combines them over all ranks, and the
local softmax is rescaled by exp(lse_local − lse) into the global one.

The common case (float32 rows, index targets, no soft-capping, one process) runs the same
formulas in compiled C instead (``_native.c``, one call per chunk on the same threads), where
the two dozen ops per chunk become three loops over each row while it is in the core's cache.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, TypeVar

import torch

from crossent._checks import check_index_range

try:
    from crossent.torch import _native
except ImportError:  # built without a C compiler: the torch ops below compute the same
    _native = None  # type: ignore[assignment]

NATIVE_LEVEL: int | None = None if _native is None else _native.levels()[-1]
"""The instruction-set level of the compiled kernel (0 baseline, 1 AVX2, 2 AVX-512): the best
this CPU runs; None where the kernel was not built, or to compute with torch ops instead."""
CHUNK_ELEMENTS = 1 << 20  # numbers per chunk and thread: 4 MB of float32
NATIVE_CHUNK_ELEMENTS = 1 << 24  # the most numbers per call of the compiled kernel
NATIVE_CALL_MIN_ELEMENTS = 1 << 16  # the fewest (about 30 µs): less is not worth a thread
CHUNK_ELEMENTS_ELSEWHERE = 1 << 26  # on a GPU (sharded, or without Triton): fewer launches
GROUP_BYTES = 64 << 20  # on a shard: state held by the chunks that are combined at once
GROUP_BYTES_ELSEWHERE = 1 << 30
Sums = tuple[torch.Tensor, ...]  # (r, 1) each: sums over a row's classes that the loss needs
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


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
    weight = None if options.weight is None else options.weight.to(logits.device, compute)
    if options.shard is not None:
        losses, row_lse = _sharded(logits, target, options, weight, grad_scale, grad, compute)
        if lse is not None:
            lse.copy_(row_lse)
        return losses
    if _runs_native(logits, target, options, grad):
        return _native_rows(logits, target, options, weight, grad_scale, grad, lse)
    losses = torch.empty(rows, dtype=compute, device=logits.device)
    step = _chunk_rows(classes, logits.device)

    def run(start: int) -> None:
        stop = min(rows, start + step)
        out = None if grad is None else grad[start:stop]
        losses[start:stop], row_lse = _chunk(
            logits[start:stop], target[start:stop], options, weight,
            rows_of(grad_scale, start, stop), out, compute,
        )  # fmt: skip
        if lse is not None:
            lse[start:stop] = row_lse

    on_threads(run, range(0, rows, step), logits.device)
    return losses


def _runs_native(
    logits: torch.Tensor, target: torch.Tensor, options: Options, grad: torch.Tensor | None
) -> bool:
    """Whether the compiled kernel computes this: float32 rows of unit stride on the CPU,
    index targets, no soft-capping, no shard."""
    return (
        NATIVE_LEVEL is not None
        and logits.device.type == "cpu"
        and logits.dtype == torch.float32
        and logits.stride(1) == 1
        and not target.is_floating_point()
        and options.softcap is None
        and options.shard is None
        and (grad is None or _separate_rows(grad))
    )


def _separate_rows(grad: torch.Tensor) -> bool:
    """A float32 gradient whose rows do not overlap (an expanded tensor's may: the C kernel
    would read what it wrote, from several threads)."""
    classes = grad.shape[1]
    return grad.dtype == torch.float32 and grad.stride(1) == 1 and grad.stride(0) >= classes


def _native_rows(
    logits: torch.Tensor,
    target: torch.Tensor,
    options: Options,
    weight: torch.Tensor | None,
    grad_scale: torch.Tensor | None,
    grad: torch.Tensor | None,
    lse: torch.Tensor | None,
) -> torch.Tensor:
    """:func:`loss_and_grad` by the compiled kernel, a chunk of rows per call on the thread
    pool (the kernel releases the GIL)."""
    assert _native is not None
    assert NATIVE_LEVEL is not None
    rows, classes = logits.shape
    labels = target.to(torch.int64).contiguous()
    if labels.shape != (rows,):  # the kernel reads one label per row
        raise ValueError(f"one label per row of logits {tuple(logits.shape)}; got {labels.shape}")
    weight = None if weight is None else weight.contiguous()
    total_weight = float(classes) if weight is None else float(weight.sum())
    scale = None if grad_scale is None else grad_scale.to(torch.float32).contiguous()
    scale_step = _row_stride(scale)
    losses = torch.empty(rows, dtype=torch.float32)
    row_lse = None if lse is None else torch.empty(rows, dtype=torch.float32)
    step = _native_rows_per_call(rows, classes)

    def at(tensor: torch.Tensor | None, row: int) -> int:
        """The address of ``tensor``'s row ``row`` (0 for no tensor; a 0-d tensor's own)."""
        if tensor is None:
            return 0
        return tensor.data_ptr() + row * _row_stride(tensor) * tensor.element_size()

    def run(start: int) -> int:
        bad = _native.index_rows(
            at(logits, start), _row_stride(logits), at(grad, start), _row_stride(grad),
            at(labels, start), min(rows, start + step) - start, classes, at(weight, 0),
            total_weight, options.ignore_index, options.label_smoothing, options.z_loss,
            at(scale, start), scale_step, at(losses, start), at(row_lse, start), NATIVE_LEVEL,
        )  # fmt: skip
        return int(bad)

    if any(bad >= 0 for bad in on_threads(run, range(0, rows, step), logits.device)):
        check_index_range("target", labels, classes, options.ignore_index)  # raises
    if lse is not None and row_lse is not None:
        lse.copy_(row_lse)
    return losses


def _native_rows_per_call(rows: int, classes: int) -> int:
    """Rows per call of the compiled kernel: four calls per thread, so that the threads
    finish together, of at most :data:`NATIVE_CHUNK_ELEMENTS` numbers and, where there is
    little work, fewer calls of at least :data:`NATIVE_CALL_MIN_ELEMENTS`. Larger calls are
    faster (each call's first row is read before any arithmetic, the others while the row
    before them is computed): at 4096 × 32000, 44 ms with calls of 2^20 numbers, 39 with 2^24."""
    work = rows * max(classes, 1)
    calls = max(1, min(4 * torch.get_num_threads(), work // NATIVE_CALL_MIN_ELEMENTS))
    return max(1, min(NATIVE_CHUNK_ELEMENTS // max(classes, 1), -(-rows // calls)))


def _row_stride(tensor: torch.Tensor | None) -> int:
    """Elements from one row to the next; 0 for a 0-d tensor (one number for all rows)."""
    return 0 if tensor is None or tensor.dim() == 0 else tensor.stride(0)


def on_threads(
    work: Callable[[_Item], _Result], items: Sequence[_Item], device: torch.device
) -> list[_Result]:
    """``[work(item) for item in items]`` without autograd; on the CPU one item per thread of
    a pool, each torch op single-threaded.

    Threads rather than torch's own parallelism: OpenMP's barrier after every op costs 10×
    when another process holds a core (torch ops release the GIL, so threads overlap). A
    single item runs on one thread too: even a 32 × 10 softmax waited milliseconds at
    OpenMP's barrier while another process was busy.
    """
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        with torch.no_grad():
            return [work(item) for item in items]
    torch.set_num_threads(1)
    try:
        if len(items) == 1:
            with torch.no_grad():
                return [work(items[0])]
        return list(_pool(threads).map(_without_grad(work), items))
    finally:
        torch.set_num_threads(threads)


class _Pool:
    """The process's one thread pool, made on first use: starting threads for every call
    cost milliseconds, more than a small loss takes."""

    lock = threading.Lock()
    executor: ThreadPoolExecutor | None = None
    workers = 0


def _pool(threads: int) -> ThreadPoolExecutor:
    """The pool, with ``threads`` workers (made again when that number changes)."""
    with _Pool.lock:
        if _Pool.executor is None or _Pool.workers != threads:
            if _Pool.executor is not None:
                _Pool.executor.shutdown(wait=False)
            _Pool.executor = ThreadPoolExecutor(threads, thread_name_prefix="crossent")
            _Pool.workers = threads
        return _Pool.executor


def _forget_pool() -> None:
    """In a forked child: the parent's pool threads do not exist there."""
    _Pool.lock = threading.Lock()
    _Pool.executor, _Pool.workers = None, 0


os.register_at_fork(after_in_child=_forget_pool)


def _without_grad(work: Callable[[_Item], _Result]) -> Callable[[_Item], _Result]:
    """``work`` with autograd off: grad mode is per thread, and a pool's threads must not
    record a graph."""

    def run(item: _Item) -> _Result:
        with torch.no_grad():
            return work(item)

    return run


def _chunk_rows(classes: int, device: torch.device) -> int:
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
class _Softmax:
    """A chunk after its softmax: what the loss and the gradient still need."""

    part: _Target
    e: torch.Tensor | None  # p = softmax(x) (local on a shard), None when no gradient is asked
    lse: torch.Tensor  # (r, 1) log-sum-exp (of this slice on a shard)
    capped: torch.Tensor | None  # tanh(x_raw / s) with soft-capping


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
    chunk = _softmax(x_in, target, options, weight, out, compute)
    loss = _finish(chunk, chunk.lse, chunk.part.sums, None, options, scale, out, compute)
    return loss, chunk.lse[:, 0]


def _softmax(
    x_in: torch.Tensor,
    target: torch.Tensor,
    options: Options,
    weight: torch.Tensor | None,
    out: torch.Tensor | None,
    compute: torch.dtype,
) -> _Softmax:
    """The first half of a chunk: its targets' sums, its softmax (into ``out`` where the
    dtypes allow) and its log-sum-exp."""
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
    if options.shard is not None:  # a slice of −inf logits: no local softmax (torch's is NaN)
        empty = m == -math.inf
        if bool(empty.any()):
            e.masked_fill_(empty, 0.0)
            lse = lse.masked_fill(empty, -math.inf)
    return _Softmax(part, None if out is None else e, lse, capped)


def _finish(
    chunk: _Softmax,
    lse: torch.Tensor,
    sums: Sums,
    rescale: torch.Tensor | None,
    options: Options,
    scale: torch.Tensor | None,
    out: torch.Tensor | None,
    compute: torch.dtype,
) -> torch.Tensor:
    """The second half: the row losses from the log-sum-exp and sums of all classes, and the
    gradient into ``out``; ``rescale`` = exp(lse_local − lse) turns a shard's softmax into
    the softmax over all classes."""
    part, e = chunk.part, chunk.e
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
    if chunk.capped is not None:
        e.mul_(1 - chunk.capped * chunk.capped)
    if not bool(part.keep.all()):
        e.masked_fill_(~part.keep[:, None], 0.0)  # also clears a NaN row of all −inf logits
    if e is not out:
        out.copy_(e)
    return loss


def _sharded(
    logits: torch.Tensor,
    target: torch.Tensor,
    options: Options,
    weight: torch.Tensor | None,
    grad_scale: torch.Tensor | None,
    grad: torch.Tensor | None,
    compute: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row losses and log-sum-exps of a shard's logits, combined with the other shards'.

    The rows are taken a group of chunks at a time: the softmax of each chunk (on the thread
    pool), one combination of the whole group with the other shards (one MAX and one SUM
    all-reduce, whose latency dwarfs a few numbers per row), then each chunk's losses and
    gradient. A group is every row, unless the chunks keep chunk-sized state until they are
    finished (probability targets, soft-capping, logits of a narrower dtype or a gradient
    written over them): then as many chunks as hold :data:`GROUP_BYTES` of it. Group and chunk
    sizes depend only on what every shard knows alike (the caller, not this rank's data), so
    all shards meet at the same collectives; every rank must ask for the same gradients.
    """
    shard, rows = options.shard, logits.shape[0]
    assert shard is not None
    step = _chunk_rows(shard.widest, logits.device)
    # what every rank knows alike: not data pointers (every empty slice's is 0), nor whether
    # this rank asked for a gradient in another dtype (a softmax held apart either way)
    apart = logits.dtype != compute or grad is logits
    held = sum((target.is_floating_point(), options.softcap is not None, apart))
    per_row = held * shard.widest * torch.finfo(compute).bits // 8
    budget = GROUP_BYTES if logits.device.type == "cpu" else GROUP_BYTES_ELSEWHERE
    group = max(rows, 1) if not per_row else max(1, budget // (per_row * step)) * step
    gradient = (lambda at: None) if grad is None else (lambda at: grad[at])

    def softmax(at: slice) -> _Softmax:
        return _softmax(logits[at], target[at], options, weight, gradient(at), compute)

    def combined(spans: list[slice]) -> tuple[torch.Tensor, torch.Tensor]:
        """One group of consecutive chunks: its losses and log-sum-exps."""
        chunks = on_threads(softmax, spans, logits.device)
        local = torch.cat([chunk.lse for chunk in chunks])
        columns = zip(*(chunk.part.sums for chunk in chunks), strict=True)
        total, rescale, sums = shard.combine(local, tuple(torch.cat(c) for c in columns))
        first = spans[0].start

        def finish(span: tuple[slice, _Softmax]) -> torch.Tensor:
            at, chunk = span
            mine = slice(at.start - first, at.stop - first)  # in the group's rows
            return _finish(
                chunk, total[mine], tuple(t[mine] for t in sums), rescale[mine], options,
                rows_of(grad_scale, at.start, at.stop), gradient(at), compute,
            )  # fmt: skip

        losses = on_threads(finish, list(zip(spans, chunks, strict=True)), logits.device)
        return torch.cat(losses), total[:, 0]

    losses = torch.empty(rows, dtype=compute, device=logits.device)
    lse = torch.empty(rows, dtype=compute, device=logits.device)
    for first in range(0, rows, group):
        these = slice(first, min(rows, first + group))
        spans = [slice(a, min(rows, a + step)) for a in range(first, these.stop, step)]
        losses[these], lse[these] = combined(spans)
    return losses, lse


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
    if eps:  # Σ_j w_j x_j, where a class of weight 0 adds 0 even at x_j = −inf
        if local_weight is None:
            sums += (x.sum(dim=1, keepdim=True),)
        else:
            sums += ((torch.where(local_weight == 0, 0.0, x) @ local_weight)[:, None],)
    label = (1 - eps) * w_y  # the label's weight in the loss: a number without class weights

    def loss_at(lse: torch.Tensor, sums: Sums) -> torch.Tensor:
        loss = (lse - sums[0])[:, 0]  # each factor below only where it is not 1: ops cost ~10 µs
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
