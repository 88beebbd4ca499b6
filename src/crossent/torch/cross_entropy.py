"""The cross-entropy loss as an autograd Function: the gradient is computed in the forward.

One pass over the logits writes both the loss of every row and its gradient (already scaled
for the reduction); the backward multiplies that gradient by the upstream gradient. See
:mod:`crossent.torch._cpu` for the math and :mod:`crossent.torch.reference` for the
definition in plain PyTorch.
"""

from __future__ import annotations

import importlib.util
import math
from typing import Any, Protocol

import torch
from torch.autograd.function import once_differentiable

from crossent._checks import Reduction, check_base, check_index_range, check_reduction
from crossent.torch import _cpu, _reuse
from crossent.torch._cpu import Options
from crossent.torch.reference import example_shape, reduce_rows


class Kernel(Protocol):
    """A pass over rows of logits: their losses; their gradient and log-sum-exps if asked."""

    def __call__(
        self,
        logits: torch.Tensor,
        target: torch.Tensor,
        options: Options,
        grad_scale: torch.Tensor | None,
        grad: torch.Tensor | None,
        lse: torch.Tensor | None = None,
    ) -> torch.Tensor: ...


def cross_entropy(
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
    inplace_backward: bool = False,
) -> torch.Tensor:
    """Cross entropy H(y, softmax(logits)) of targets under logits, a drop-in for PyTorch's.

    For each example, in nats (divided by ln ``base``), with class weights w, label smoothing
    ε and soft-capped logits x = s · tanh(x_raw / s) when ``softcap`` = s:

        index target y:   −(1 − ε) w_y log p_y − (ε / C) Σ_j w_j log p_j + z · lse(x)²
        prob. target t:   −Σ_j w_j ((1 − ε) t_j + ε / C) log p_j + z · lse(x)²

    with p = softmax(x), 0 · log 0 = 0 and z = ``z_loss``. Where PyTorch's
    ``F.cross_entropy`` is right this equals it; where it is not, this follows the math:
    an ignored example has loss 0 and gradient exactly 0 even with −inf logits, a probability
    target of 0 where the logit is −inf contributes 0, and a "mean" over no examples is 0 with
    a zero gradient (PyTorch: NaN).

    Args:
        logits: ``(N, C)``, ``(N, C, d1, ...)`` or ``(C,)``; float16/bfloat16 are computed
            and the loss returned in float32, the gradient in the logits' dtype.
        target: class indices ``(N,)`` / ``(N, d1, ...)`` (int64), or probabilities of the
            logits' shape.
        weight: ``(C,)`` class weights.
        reduction: "mean" (over examples not ignored, weighted by w_y for index targets),
            "sum" or "none".
        inplace_backward: write the gradient over ``logits`` to save memory; the logits are
            then destroyed, so only use it when nothing else needs them.

    >>> x = torch.tensor([[2.0, 0.0, -1.0]]); y = torch.tensor([0])
    >>> bool(torch.isclose(cross_entropy(x, y), torch.nn.functional.cross_entropy(x, y)))
    True
    """
    options = Options(weight, ignore_index, float(label_smoothing), float(z_loss), softcap)
    return loss_of(logits, target, options, reduction, base, inplace_backward)


def loss_of(
    logits: torch.Tensor,
    target: torch.Tensor,
    options: Options,
    reduction: Reduction,
    base: float,
    inplace_backward: bool = False,
) -> torch.Tensor:
    """:func:`cross_entropy` with its options gathered, after checking them."""
    check_reduction(reduction)
    check_logits_options(logits, target, options)
    scale = 1.0 / math.log(check_base(base))
    result: torch.Tensor = _CrossEntropy.apply(  # type: ignore[no-untyped-call]
        logits, target, options, reduction, scale, inplace_backward
    )
    return result


class _CrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(
        ctx: Any,
        logits: torch.Tensor,
        target: torch.Tensor,
        options: Options,
        reduction: Reduction,
        scale: float,
        inplace: bool,
    ) -> torch.Tensor:
        rows, row_target = _as_rows(logits), _target_rows(target, logits)
        checkable = rows.device.type == "cpu" and not torch.compiler.is_compiling()
        if not target.is_floating_point() and checkable:
            classes = options.classes(rows.shape[1])
            check_index_range("target", row_target, classes, options.ignore_index)
        denominator = _denominator(row_target, options, rows.shape[0])
        grad_scale = _grad_scale(reduction, denominator, scale)
        wants_grad = bool(ctx.needs_input_grad[0])
        if torch.compiler.is_compiling() and options.shard is None:  # one opaque operator
            losses, grad = torch.ops.crossent.cross_entropy_rows(
                rows, row_target, options.weight, options.ignore_index,
                options.label_smoothing, options.z_loss, options.softcap or 0.0, grad_scale,
                wants_grad,
            )  # fmt: skip
        else:  # eager: the same pass without the operator's dispatch (0.1 ms per call)
            in_place = inplace and wants_grad and rows.data_ptr() == logits.data_ptr()
            grad = rows if in_place else _empty_gradient(rows) if wants_grad else None
            losses = _kernel_for(rows, options)(rows, row_target, options, grad_scale, grad)
        if scale != 1.0:  # nats, the default, need no product
            losses = losses * scale
        ctx.reduction, ctx.logits_shape, ctx.inplace = reduction, logits.shape, inplace
        ctx.used = False
        if wants_grad:
            ctx.save_for_backward(grad)
        return reduce_rows(losses, denominator, reduction, logits, target)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[Any, ...]:
        (grad,) = scale_saved(ctx, ctx.saved_tensors, grad_output, "cross_entropy")
        return (_from_rows(grad, ctx.logits_shape), None, None, None, None, None)


def scale_saved(
    ctx: Any, grads: tuple[torch.Tensor, ...], grad_output: torch.Tensor, name: str
) -> tuple[torch.Tensor, ...]:
    """Gradients computed in the forward, times the upstream gradient ``grad_output``.

    On the CPU a plain ``loss.backward()`` (upstream exactly 1) costs nothing; elsewhere the
    product is taken in place without asking the device whether it is 1 (no host sync), which
    uses the saved gradients up, so a second backward is refused with a clear error.
    """
    upstream = grad_output.reshape(-1, 1) if ctx.reduction == "none" else grad_output
    on_cpu = grads[0].device.type == "cpu" and not torch.compiler.is_compiling()
    if on_cpu and ctx.reduction != "none" and bool(grad_output == 1):
        return grads  # loss.backward() on a mean or sum: the gradients are ready as they are
    if ctx.inplace or not on_cpu:
        if ctx.used:
            raise RuntimeError(
                f"crossent.torch.{name}: backward ran twice through the same loss; with "
                "inplace_backward=True or on CUDA the gradient is scaled in place, so compute "
                "the loss again instead of retain_graph=True"
            )
        ctx.used = True
        return tuple(grad.mul_(upstream.to(grad.dtype)) for grad in grads)
    return tuple(grad * upstream.to(grad.dtype) for grad in grads)  # kept for retain_graph


@torch.library.custom_op("crossent::cross_entropy_rows", mutates_args=())
def _cross_entropy_rows(
    rows: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    grad_scale: torch.Tensor,
    wants_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row losses (nats) and, if wanted, the scaled gradient (else an empty tensor).

    A registered operator, so that torch.compile treats the pass as one opaque call
    (fullgraph=True works) instead of tracing into its chunk loop.
    """
    options = Options(weight, ignore_index, label_smoothing, z_loss, softcap or None)
    grad = _empty_gradient(rows) if wants_grad else rows.new_empty(0)
    kernel = _kernel_for(rows, options)
    losses = kernel(rows, target, options, grad_scale, grad if wants_grad else None)
    return losses, grad


@_cross_entropy_rows.register_fake
def _(
    rows: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    grad_scale: torch.Tensor,
    wants_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    compute = torch.float64 if rows.dtype == torch.float64 else torch.float32
    losses = rows.new_empty(rows.shape[0], dtype=compute)
    return losses, torch.empty_like(rows) if wants_grad else rows.new_empty(0)


def _kernel_for(rows: torch.Tensor, options: Options) -> Kernel:
    """The Triton kernels on a GPU; the chunked torch pass otherwise, and on a shard of the
    classes (its chunks meet the other shards' between passes)."""
    if _use_triton(rows) and options.shard is None:
        from crossent.torch._triton.cross_entropy import loss_and_grad

        return loss_and_grad
    return _cpu.loss_and_grad


def _use_triton(rows: torch.Tensor) -> bool:
    return rows.is_cuda and importlib.util.find_spec("triton") is not None


def _empty_gradient(rows: torch.Tensor) -> torch.Tensor:
    """An uninitialised buffer like ``rows``; on the CPU memory that is already mapped where
    it can be (:mod:`crossent.torch._reuse`)."""
    if rows.device.type == "cpu":
        return _reuse.empty(tuple(rows.shape), rows.dtype)
    return torch.empty_like(rows)


def _as_rows(logits: torch.Tensor) -> torch.Tensor:
    """(N, C, d1, ...) → (N·d1·…, C), contiguous; a view when the layout allows."""
    if logits.dim() == 1:
        return logits.reshape(1, -1)
    if logits.dim() == 2:
        return logits.contiguous()
    rows = math.prod(example_shape(logits))  # counted, not inferred: a shard may hold no class
    return logits.movedim(1, -1).reshape(rows, logits.shape[1])


def _from_rows(grad: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    if len(shape) <= 2:
        return grad.reshape(shape)
    moved = (shape[0], *shape[2:], shape[1])
    return grad.reshape(moved).movedim(-1, 1)


def _target_rows(target: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    if target.is_floating_point():
        return _as_rows(target)
    return target.reshape(-1).contiguous()  # the kernel reads label i at offset i


def _denominator(target: torch.Tensor, options: Options, rows: int) -> torch.Tensor:
    """What "mean" divides by: Σ w_y over examples not ignored, or N for probability targets."""
    if target.is_floating_point():
        return torch.full((), float(rows), dtype=torch.float64, device=target.device)
    keep = target != options.ignore_index
    if options.weight is None:
        return keep.sum().to(torch.float64)
    safe = torch.where(keep, target, 0)
    return torch.where(keep, options.weight.to(torch.float64)[safe], 0.0).sum()


def _grad_scale(reduction: Reduction, denominator: torch.Tensor, scale: float) -> torch.Tensor:
    """What every row's gradient is multiplied by: the unit's scale, over the mean's denominator."""
    if reduction != "mean":
        # made on the device (a fill, not a copy from the host: CUDA graphs can capture it)
        return torch.full((), scale, dtype=torch.float64, device=denominator.device)
    return torch.where(denominator == 0, 0.0, scale / denominator)


def check_logits_options(logits: torch.Tensor, target: torch.Tensor, options: Options) -> None:
    """The logits' dtype, a probability target's shape, and the options."""
    if not logits.is_floating_point():
        raise TypeError(f"`logits` must be a floating-point tensor; got dtype {logits.dtype}")
    if target.is_floating_point() and target.shape != logits.shape:
        raise ValueError(
            f"probability `target` must have the shape of `logits` {tuple(logits.shape)}; "
            f"got {tuple(target.shape)}"
        )
    examples = example_shape(logits)
    if not target.is_floating_point() and target.shape != examples:
        raise ValueError(
            f"index `target` must have the shape of `logits` {tuple(logits.shape)} without its "
            f"class dimension, {tuple(examples)}; got {tuple(target.shape)}"
        )
    check_loss_options(logits.shape[1] if logits.dim() > 1 else logits.shape[0], options)


def check_loss_options(classes: int, options: Options) -> None:
    """The options every form of the loss shares: class weights and the three numbers, for
    logits of ``classes`` classes (a shard's: the weights are one per class of all shards)."""
    classes = options.classes(classes)
    weight, label_smoothing = options.weight, options.label_smoothing
    z_loss, softcap = options.z_loss, options.softcap
    if weight is not None and tuple(weight.shape) != (classes,):
        raise ValueError(
            f"`weight` must have shape ({classes},), one per class; got {tuple(weight.shape)}"
        )
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"`label_smoothing` must be in [0, 1]; got {label_smoothing!r}")
    if not (z_loss >= 0 and math.isfinite(z_loss)):
        raise ValueError(f"`z_loss` must be a finite number ≥ 0; got {z_loss!r}")
    if softcap is not None and not (softcap > 0 and math.isfinite(softcap)):
        raise ValueError(f"`softcap` must be a finite number > 0 or None; got {softcap!r}")
