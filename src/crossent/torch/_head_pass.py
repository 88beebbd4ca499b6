"""One pass over the linear head's rows, a chunk of logits at a time (or tiles of them).

Each chunk's logits (r × C) are computed by one matrix product, turned into their gradient in
place by the logits-given pass (:mod:`crossent.torch._dispatch` picks it), and multiplied out
at once into ∂h, ∂W and ∂b, so nothing of size N × C ever exists. The low-memory mode takes
tiles or blocks of classes instead (:mod:`crossent.torch._class_blocks`, the Triton tiles).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from crossent.torch import _dispatch
from crossent.torch._spec import LossOptions, compute_dtype
from crossent.torch._torch_ops import Shard, rows_of, weight_slice

CHUNK_BYTES = {"cpu": 44 << 20}  # logits held at once: 9% of a 4096 × 32000 fp32 matrix
CHUNK_BYTES_ELSEWHERE = 256 << 20  # on a GPU
MIN_CHUNK_ROWS = 8  # fewer rows per matrix product would waste it


Gradient = Literal["forward", "backward"]


@dataclass(frozen=True)
class HeadCall:
    """Everything about one call besides its tensors."""

    options: LossOptions  # without the class weights, which are an input
    chunk_rows: int
    low_memory: bool
    weight_grad_dtype: torch.dtype | None
    shard: Shard | None
    gradient: Gradient  # where the gradients are computed


@dataclass
class Pass:
    """What one pass over the chunks produces: losses, log-sum-exps and the gradients asked for."""

    losses: torch.Tensor
    lse: torch.Tensor
    hidden: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    target: torch.Tensor | None = None

    def gradients(self) -> tuple[torch.Tensor | None, ...]:
        return self.hidden, self.weight, self.bias, self.target


@dataclass(frozen=True)
class Head:
    """The tensors of one call: hidden rows (..., D), the weight (C, D), the bias, the targets."""

    hidden: torch.Tensor
    weight: torch.Tensor
    bias: torch.Tensor | None
    target: torch.Tensor


@dataclass(frozen=True)
class HeadPlan:
    """How the head is computed, besides the loss's options (see
    :func:`linear_cross_entropy`)."""

    chunk_size: int | None = None
    low_memory: bool | None = None
    weight_grad_dtype: torch.dtype | None = torch.float32

    def __post_init__(self) -> None:
        size = self.chunk_size
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
            raise ValueError(f"`chunk_size` must be a whole number ≥ 1 or None; got {size!r}")
        if self.low_memory is not None and not isinstance(self.low_memory, bool):
            raise TypeError(f"`low_memory` must be True, False or None; got {self.low_memory!r}")
        dtype = self.weight_grad_dtype
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise TypeError(
                f"`weight_grad_dtype` must be a floating-point torch.dtype or None; got {dtype!r}"
            )


def default_chunk_rows(classes: int, hidden: torch.Tensor) -> int:
    """Rows of logits that fit in the device's chunk budget, at least :data:`MIN_CHUNK_ROWS`,
    a multiple of 32 where that many fit (matrix-product tiles come in 32s to 128s)."""
    rows = budget(hidden) // max(1, classes * hidden.element_size())
    return max(MIN_CHUNK_ROWS, rows - rows % 32 if rows >= 32 else rows)


def tiles_needed(
    hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, options: LossOptions
) -> bool:
    """Whether the low-memory mode takes over by itself: for the targets it supports, when
    even :data:`MIN_CHUNK_ROWS` rows of logits exceed the device's chunk budget."""
    too_wide = weight.shape[0] * hidden.element_size() * MIN_CHUNK_ROWS > budget(hidden)
    return too_wide and not target.is_floating_point() and options.weight is None


def check_low_memory(target: torch.Tensor, options: LossOptions, shard: Shard | None) -> None:
    given = [
        name
        for name, present in (
            ("probability targets", target.is_floating_point()),
            ("a class_weight", options.weight is not None),
            ("a shard of the classes", shard is not None),
        )
        if present
    ]
    if given:
        raise ValueError(
            "`low_memory=True` takes class-index targets without `class_weight`, on one "
            f"process; got {' and '.join(given)}"
        )


def budget(tensor: torch.Tensor) -> int:
    """Bytes of temporary logits allowed at once on ``tensor``'s device."""
    return CHUNK_BYTES.get(tensor.device.type, CHUNK_BYTES_ELSEWHERE)


def head_pass(
    head: Head,
    options: LossOptions,
    call: HeadCall,
    grad_scale: torch.Tensor | None,
    wants: tuple[bool, ...],
    lse: torch.Tensor | None,
) -> Pass:
    """One pass over the rows: losses, log-sum-exps, and the gradients in ``wants`` (hidden,
    weight, bias, target), each row's gradient multiplied by ``grad_scale`` (0-d, or one
    factor per row). The low-memory kernels reuse a known ``lse``; the chunked pass computes
    it again."""
    if call.low_memory:
        return _run_tiles(head, options, grad_scale, wants, lse)
    hidden, weight, bias, target = head.hidden, head.weight, head.bias, head.target
    want_h, want_w, want_b, want_t = (*wants, False, False, False, False)[:4]
    rows, classes = hidden.shape[0], weight.shape[0]
    compute = compute_dtype(hidden.dtype)
    accumulate = torch.promote_types(call.weight_grad_dtype or weight.dtype, weight.dtype)
    if hidden.dtype == torch.float16:
        accumulate = torch.promote_types(accumulate, torch.float32)  # its range: 65,504
    out = Pass(
        losses=torch.empty(rows, dtype=compute, device=hidden.device),
        lse=torch.empty(rows, dtype=compute, device=hidden.device),
        hidden=torch.empty_like(hidden) if want_h else None,
        weight=weight.new_zeros(weight.shape, dtype=accumulate) if want_w else None,
        bias=weight.new_zeros(classes, dtype=accumulate) if want_b and bias is not None else None,
        target=torch.empty_like(target) if want_t and target.is_floating_point() else None,
    )
    step = min(call.chunk_rows, max(rows, 1))
    buffer = hidden.new_empty(step, classes)
    bias = None if bias is None else bias.to(hidden.dtype)  # once, not once per chunk
    gradient = want_h or want_w or want_b
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        h, logits = hidden[start:stop], buffer[: stop - start]
        if bias is None:
            torch.mm(h, weight.T, out=logits)
        else:
            torch.addmm(bias, h, weight.T, out=logits)
        capped = _capped(logits, options) if out.target is not None else None
        grad = logits if gradient else None  # the gradient overwrites the chunk's logits
        scale = rows_of(grad_scale, start, stop)
        out.losses[start:stop] = _dispatch.rows_kernel(logits, target, options, grad, call.shard)(
            logits, target[start:stop], options, scale, grad, out.lse[start:stop]
        )
        if capped is not None and out.target is not None and scale is not None:
            log_p = capped - out.lse[start:stop, None]
            w = 1.0 if options.weight is None else weight_slice(options.weight, call.shard, classes)
            f = scale.to(compute).reshape(-1, 1)
            out.target[start:stop] = -(1 - options.label_smoothing) * w * log_p * f
        if grad is not None:
            _multiply_out(grad, h, weight, out, start)
    if call.shard is not None and out.hidden is not None:
        call.shard.add_up(out.hidden)  # ∂h = Σ over shards of g W_shard
    return out


def _capped(logits: torch.Tensor, options: LossOptions) -> torch.Tensor:
    """A chunk's logits in the compute dtype, soft-capped: kept for the target's gradient."""
    x = logits.to(compute_dtype(logits.dtype), copy=True)
    if options.softcap is not None:
        x = options.softcap * torch.tanh(x / options.softcap)
    return x


def _run_tiles(
    head: Head,
    options: LossOptions,
    grad_scale: torch.Tensor | None,
    wants: tuple[bool, ...],
    lse: torch.Tensor | None,
) -> Pass:
    """:func:`head_pass` in the low-memory mode: Triton tiles, or blocks of classes in PyTorch."""
    bias = None if head.bias is None else head.bias.contiguous()
    tensors = (head.hidden, head.weight.contiguous(), bias, head.target)  # as the kernels index
    implementation: Any = _dispatch.head_tiles(head.hidden)
    if lse is None:
        losses, lse = implementation.forward(*tensors, options)
    else:
        losses = lse.new_empty(0)  # the backward wants gradients only
    out = Pass(losses, lse)
    if grad_scale is not None and any(wants[:3]):
        out.hidden, out.weight, out.bias = implementation.gradients(
            *tensors, options, lse, grad_scale, wants[:3]
        )
    return out


def _multiply_out(
    grad: torch.Tensor, h: torch.Tensor, weight: torch.Tensor, out: Pass, start: int
) -> None:
    """A chunk's share of the three gradients, from its logits' gradient ``grad`` (r × C)."""
    if out.hidden is not None:
        torch.mm(grad, weight, out=out.hidden[start : start + grad.shape[0]])
    if out.weight is not None:
        _add_product(out.weight, grad, h)
    if out.bias is not None:
        out.bias += grad.sum(dim=0, dtype=out.bias.dtype)


def _add_product(total: torch.Tensor, grad: torch.Tensor, h: torch.Tensor) -> None:
    """total += gradᵀ h, where ``total`` may be wider (float32) than the chunk's dtype.

    A wider total takes the product a block of classes at a time, each block's product
    rounded once to the chunk's dtype, so that no C × D temporary is made.
    """
    if total.dtype == grad.dtype:
        total.addmm_(grad.T, h)
        return
    block = max(1, budget(h) // max(1, h.shape[1] * grad.element_size()))
    for start in range(0, total.shape[0], block):
        total[start : start + block] += grad[:, start : start + block].T @ h
