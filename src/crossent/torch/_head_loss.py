"""Linear + cross entropy without the N×C logits: a classifier head's loss and its gradients.

For hidden rows h_i (D numbers), a weight W (C × D) and a bias b (C), the logits of row i
are x_i = W h_i + b and the loss is the logits-given cross entropy of
:func:`crossent.torch.cross_entropy`. With g_i = ∂loss/∂x_i (C numbers, already scaled for
the reduction), the chain rule gives

    ∂loss/∂h_i = g_i W,    ∂loss/∂W = Σ_i g_iᵀ h_i,    ∂loss/∂b = Σ_i g_i.

Rows are taken a chunk at a time: the chunk's logits (r × C) are computed, turned into their
gradient in place by the logits-given pass, and multiplied out at once, so nothing of size
N × C ever exists. With the gradients computed in the forward ("mean" and "sum") this costs
the unfused head's 6·N·D·C flops: 2 for the logits, 2 for ∂h, 2 for ∂W. For "none", and for
float16 (whose range cannot hold a gradient before the upstream factor is known), the
backward computes the logits again (8·N·D·C) with every factor in float32. The weight's
gradient is summed over chunks in float32 by default, whatever W's dtype. Where even a few
full rows of logits are too many, the low-memory mode takes blocks of classes instead (see
``low_memory``). Under ``torch.func`` transforms the logits are made (as ``F.linear`` would)
and :func:`~crossent.torch.cross_entropy` differentiates them: per-example gradients of W
need them anyway.
"""

from __future__ import annotations

import math
from typing import Any, Literal, overload

import torch

from crossent._checks import Reduction, check_index_range
from crossent.torch import _differentiable, _library  # noqa: F401 (registers the operators)
from crossent.torch._head_pass import (
    Head,
    HeadCall,
    HeadPlan,
    Pass,
    check_low_memory,
    default_chunk_rows,
    head_pass,
    tiles_needed,
)
from crossent.torch._logits_loss import loss_of, transformed
from crossent.torch._rows import denominators, grad_factor, reduce_rows
from crossent.torch._saved import refuse_second_backward, scale_saved
from crossent.torch._spec import LossOptions, compute_dtype, with_options_doc
from crossent.torch._torch_ops import Shard


@overload
def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = ...,
    class_weight: torch.Tensor | None = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    reduction: Reduction = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    base: float = ...,
    chunk_size: int | None = ...,
    low_memory: bool | None = ...,
    weight_grad_dtype: torch.dtype | None = ...,
    return_lse: Literal[False] = ...,
) -> torch.Tensor: ...


@overload
def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = ...,
    class_weight: torch.Tensor | None = ...,
    ignore_index: int = ...,
    label_smoothing: float = ...,
    reduction: Reduction = ...,
    z_loss: float = ...,
    softcap: float | None = ...,
    base: float = ...,
    chunk_size: int | None = ...,
    low_memory: bool | None = ...,
    weight_grad_dtype: torch.dtype | None = ...,
    return_lse: Literal[True],
) -> tuple[torch.Tensor, torch.Tensor]: ...


def linear_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    class_weight: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    reduction: Reduction = "mean",
    z_loss: float = 0.0,
    softcap: float | None = None,
    base: float = math.e,
    chunk_size: int | None = None,
    low_memory: bool | None = None,
    weight_grad_dtype: torch.dtype | None = torch.float32,
    return_lse: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Cross entropy of targets under logits ``hidden @ weight.T + bias``, never holding them.

    Equal to ``cross_entropy(F.linear(hidden, weight, bias), target, ...)`` (see
    :func:`crossent.torch.cross_entropy` for the edge cases and the unit, nats divided by
    ln ``base``), with memory for only ``chunk_size`` rows of logits at a time. Every tensor
    gets its gradient (probability targets too); the backward may itself be differentiated.

    Args:
        hidden: ``(N, D)`` or ``(..., D)``; float16/bfloat16 logits are computed in that dtype
            (as ``F.linear`` does) and the loss in float32.
        weight: ``(C, D)``, the head's weight, as ``nn.Linear`` holds it.
        target: class indices ``(N,)`` / ``(...)``, or probabilities ``(..., C)``.
        bias: ``(C,)`` or None.
        class_weight: the class weights, ``weight`` below.
        {options}
        chunk_size: rows of logits held at once; by default as many as fit in
            :data:`CHUNK_BYTES` (at least :data:`MIN_CHUNK_ROWS`).
        low_memory: hold no full row of logits: on CUDA the Triton kernels of
            :mod:`crossent.torch._triton.linear_cross_entropy` (tiles in registers, atomic
            float32 gradient sums, not bit-deterministic), elsewhere blocks of classes in
            PyTorch (:mod:`crossent.torch._class_blocks`, deterministic). Either way an online
            log-sum-exp, 8·N·D·C flops, index targets and no ``class_weight``. None: chosen
            by itself when :data:`MIN_CHUNK_ROWS` rows of logits would not fit in the chunk
            budget (on the CPU, beyond a million classes).
        weight_grad_dtype: the dtype the weight's (and bias's) gradient is summed in across
            chunks, float32 by default (summing bfloat16 chunk by chunk loses precision), or
            the weight's dtype where that is wider; None sums in the weight's own dtype,
            saving that buffer.
        return_lse: also return each example's log-sum-exp of the (soft-capped) logits, in
            nats, in the loss's dtype and the target's layout, without gradient.

    In the chunked mode (the default) chunks run in a fixed order and the weight's gradient is
    summed in that order, so results are bit-identical from run to run on the same machine and
    thread count.

    >>> h = torch.randn(6, 4); w = torch.randn(5, 4); y = torch.tensor([0, 1, 2, 3, 4, 0])
    >>> loss = linear_cross_entropy(h, w, y, chunk_size=4)
    >>> bool(torch.isclose(loss, torch.nn.functional.cross_entropy(h @ w.T, y)))
    True
    """
    options = LossOptions.of(
        class_weight, ignore_index, label_smoothing, z_loss, softcap, reduction, base
    )
    plan = HeadPlan(chunk_size, low_memory, weight_grad_dtype)
    loss, lse = head_loss_of(Head(hidden, weight, bias, target), options, plan)
    return (loss, lse) if return_lse else loss


with_options_doc(linear_cross_entropy)


def head_loss_of(
    head: Head, options: LossOptions, plan: HeadPlan, shard: Shard | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`linear_cross_entropy` with its tensors and options gathered, after checking them:
    the loss and the log-sum-exps (in the examples' layout).

    On a shard of the classes the chunks are sized by the widest shard, so that every shard
    takes the same chunks, and the hidden rows' gradient is summed over the shards.
    """
    rows, row_target = check_head(head, options, shard)
    example_shape = (
        head.target.shape if not head.target.is_floating_point() else head.hidden.shape[:-1]
    )
    if shard is None and transformed(*_tensors(head)):
        return _through_logits(head, options, example_shape)
    widest = head.weight.shape[0] if shard is None else shard.widest
    low_memory = plan.low_memory
    if low_memory is None:
        low_memory = shard is None and tiles_needed(head.hidden, head.weight, head.target, options)
    elif low_memory:
        check_low_memory(head.target, options, shard)
    call = HeadCall(
        options.with_weight(None),
        plan.chunk_size or default_chunk_rows(widest, head.hidden),
        bool(low_memory),
        plan.weight_grad_dtype,
        shard,
        _where_gradient(head, options),
    )
    loss, lse = _LinearCrossEntropy.apply(  # type: ignore[no-untyped-call]
        rows, head.weight, head.bias, row_target, options.weight, call
    )
    if options.reduction == "none":
        loss = loss.reshape(example_shape)
    return loss, lse.reshape(example_shape)


def check_head(
    head: Head, options: LossOptions, shard: Shard | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The shapes and dtypes of the head's tensors and the options; the rows of ``hidden``
    (N, D) and of the target."""
    rows = _check_shapes(head.hidden, head.weight, head.target, head.bias)
    options.check_target(head.target)
    options.check_classes(head.weight.shape[0] if shard is None else shard.classes)
    return rows


def _tensors(head: Head) -> tuple[torch.Tensor, ...]:
    return tuple(t for t in (head.hidden, head.weight, head.bias, head.target) if t is not None)


def _through_logits(
    head: Head, options: LossOptions, example_shape: torch.Size
) -> tuple[torch.Tensor, torch.Tensor]:
    """Under a torch.func transform: the logits made, then :func:`cross_entropy`'s rule."""
    logits = torch.nn.functional.linear(head.hidden, head.weight, head.bias)
    classes_first = logits.movedim(-1, 1) if logits.dim() > 2 else logits
    target = head.target
    if target.is_floating_point() and target.dim() > 2:
        target = target.movedim(-1, 1)
    loss = loss_of(classes_first, target, options)
    x = logits.detach().to(compute_dtype(logits.dtype))
    if options.softcap is not None:
        x = options.softcap * torch.tanh(x / options.softcap)
    return loss, torch.logsumexp(x, dim=-1).reshape(example_shape)


def _where_gradient(head: Head, options: LossOptions) -> Literal["forward", "backward"]:
    """In the forward (6·N·D·C flops), except for "none", whose upstream gradient differs by
    row, and float16, whose gradient must meet the upstream factor (a GradScaler's) in
    float32 before it is rounded: those are computed in the backward (8·N·D·C)."""
    if options.reduction == "none" or head.hidden.dtype == torch.float16:
        return "backward"
    return "forward"


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        hidden: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        target: torch.Tensor,
        class_weight: torch.Tensor | None,
        call: HeadCall,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        options = call.options.with_weight(class_weight)
        if not target.is_floating_point() and _checkable(hidden):
            classes = weight.shape[0] if call.shard is None else call.shard.classes
            check_index_range("target", target, classes, options.ignore_index)
        denominator = denominators(target, options)
        wants = tuple(bool(w) for w in (*ctx.needs_input_grad[:4],))
        in_forward = call.gradient == "forward" and any(wants)
        factor = grad_factor(options.reduction, denominator, options.scale)
        head = Head(hidden, weight, bias, target)
        result = _pass(
            head, options, call, factor if in_forward else None, wants if in_forward else (), None
        )
        ctx.call, ctx.wants, ctx.reduction = call, wants, options.reduction
        ctx.inplace = ctx.used = False  # as scale_saved reads them
        ctx.dtypes = (
            hidden.dtype,
            weight.dtype,
            None if bias is None else bias.dtype,
            target.dtype,
        )
        saved = tuple(g for g in result.gradients() if g is not None) if in_forward else ()
        ctx.in_forward = in_forward
        ctx.save_for_backward(hidden, weight, bias, target, class_weight, result.lse, *saved)
        ctx.mark_non_differentiable(result.lse)
        ctx.set_materialize_grads(False)  # no zeros made for the log-sum-exps' "gradient"
        loss = reduce_rows(result.losses * options.scale, denominator, options.reduction)
        return loss, result.lse

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor | None, _grad_lse: Any) -> tuple[Any, ...]:
        if grad_loss is None:  # nothing flows back into the loss
            return (None,) * 6
        refuse_second_backward(ctx, "linear_cross_entropy")
        call: HeadCall = ctx.call
        hidden, weight, bias, target, class_weight, lse, *saved = ctx.saved_tensors
        options = call.options.with_weight(class_weight)
        head = Head(hidden, weight, bias, target)
        if torch.is_grad_enabled():
            grads: list[torch.Tensor | None] = list(_second_order(head, options, call, grad_loss))
        elif ctx.in_forward:
            scaled = iter(scale_saved(ctx, tuple(saved), grad_loss, "linear_cross_entropy"))
            grads = [next(scaled) if want else None for want in ctx.wants]
        else:  # the upstream gradient is known now: compute again, every factor in float32
            factor = grad_factor(options.reduction, denominators(target, options), options.scale)
            upstream = grad_loss.reshape(-1) if options.reduction == "none" else grad_loss
            wide = torch.promote_types(hidden.dtype, torch.float32)
            scale = (factor * upstream.to(torch.float64)).to(wide)
            grads = list(_pass(head, options, call, scale, ctx.wants, lse).gradients())
        cast = [
            None if g is None or not want else g.to(dtype)
            for g, dtype, want in zip(grads, ctx.dtypes, ctx.wants, strict=True)
        ]
        return (*cast, None, None)


def _checkable(hidden: torch.Tensor) -> bool:
    return hidden.device.type == "cpu" and not torch.compiler.is_compiling()


def _second_order(
    head: Head, options: LossOptions, call: HeadCall, grad_loss: torch.Tensor
) -> tuple[torch.Tensor | None, ...]:
    """The gradients in differentiable torch ops, through the logits (double backward)."""
    if call.shard is not None:
        raise RuntimeError(
            "crossent.torch.distributed: the vocabulary-parallel losses have no double backward "
            "(create_graph=True): their gradient is not a graph"
        )
    return _differentiable.head_gradients(
        head.hidden, head.weight, head.bias, head.target, options, grad_loss
    )


def _pass(
    head: Head,
    options: LossOptions,
    call: HeadCall,
    grad_scale: torch.Tensor | None,
    wants: tuple[bool, ...],
    lse: torch.Tensor | None,
) -> Pass:
    """One pass over the rows: losses, log-sum-exps, and the gradients in ``wants`` (hidden,
    weight, bias, target), each row's gradient multiplied by ``grad_scale`` (0-d, or one
    factor per row). Under torch.compile one registered operator."""
    if not torch.compiler.is_compiling():
        return head_pass(head, options, call, grad_scale, wants, lse)
    empty = head.hidden.new_empty(0)
    results = torch.ops.crossent.linear_cross_entropy_pass(
        head.hidden, head.weight, head.bias, head.target, options.weight,
        empty if grad_scale is None else grad_scale, empty if lse is None else lse,
        grad_scale is not None, lse is not None, list((*wants, False, False, False, False)[:4]),
        options.ignore_index, options.label_smoothing, options.z_loss, options.softcap or 0.0,
        call.chunk_rows, call.low_memory, call.weight_grad_dtype,
    )  # fmt: skip
    losses, row_lse, *grads = results
    want = (*wants, False, False, False, False)[:4]
    return Pass(losses, row_lse, *(g if w else None for g, w in zip(grads, want, strict=True)))


def _check_shapes(
    hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor, bias: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of ``hidden`` (N, D) and of ``target``, after checking how the shapes fit."""
    for name, tensor in (("hidden", hidden), ("weight", weight)):
        if not tensor.is_floating_point():
            raise TypeError(f"`{name}` must be a floating-point tensor; got dtype {tensor.dtype}")
    if weight.dtype != hidden.dtype:
        raise TypeError(
            f"`weight` must have the dtype of `hidden`, {hidden.dtype}; got {weight.dtype}"
        )
    if hidden.dim() < 1 or weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(
            "`weight` must be (C, D) with D = hidden.shape[-1]; got weight "
            f"{tuple(weight.shape)} for hidden {tuple(hidden.shape)}"
        )
    classes, batch = weight.shape[0], hidden.shape[:-1]
    if bias is not None and tuple(bias.shape) != (classes,):
        raise ValueError(f"`bias` must have shape ({classes},); got {tuple(bias.shape)}")
    expected = (*batch, classes) if target.is_floating_point() else tuple(batch)
    if tuple(target.shape) != expected:
        kind = "probability" if target.is_floating_point() else "index"
        raise ValueError(
            f"{kind} `target` must have shape {expected} for hidden {tuple(hidden.shape)}; "
            f"got {tuple(target.shape)}"
        )
    rows = hidden.reshape(-1, hidden.shape[-1]).contiguous()
    if target.is_floating_point():  # counted rows: a shard may hold no class
        return rows, target.reshape(rows.shape[0], classes)
    return rows, target.reshape(-1).contiguous()  # the kernels read label i at offset i
