"""The losses' passes as registered operators: what torch.compile and torch.export see.

Each is one opaque call with a fake implementation (shapes and dtypes only), so that a compiled
graph needs no break for a pass's label check, threads or chunk loop, and an exported program
holds the call. Eagerly the losses call the same Python directly (an operator's dispatch
costs more than a small loss).
"""

from __future__ import annotations

import torch

from crossent.torch import _dispatch
from crossent.torch._head_pass import Head, HeadCall, head_pass
from crossent.torch._saved import empty_gradient
from crossent.torch._spec import LossOptions, compute_dtype


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row losses (nats), log-sum-exps and, if wanted, the scaled gradient (else an empty
    tensor). A registered operator, so that torch.compile treats the pass as one opaque call
    (fullgraph=True works) instead of tracing into its chunk loop."""
    options = LossOptions(weight, ignore_index, label_smoothing, z_loss, softcap or None)
    grad = empty_gradient(rows) if wants_grad else rows.new_empty(0)
    lse = rows.new_empty(rows.shape[0], dtype=compute_dtype(rows.dtype))
    kernel = _dispatch.rows_kernel(rows, target, options, grad if wants_grad else None)
    losses = kernel(rows, target, options, grad_scale, grad if wants_grad else None, lse)
    return losses, lse, grad


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
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    compute = compute_dtype(rows.dtype)
    losses = rows.new_empty(rows.shape[0], dtype=compute)
    lse = rows.new_empty(rows.shape[0], dtype=compute)
    grad = torch.empty(rows.shape, dtype=rows.dtype, device=rows.device)
    return losses, lse, grad if wants_grad else rows.new_empty(0)


@torch.library.custom_op("crossent::cross_entropy_rows_backward", mutates_args=())
def _cross_entropy_rows_backward(
    rows: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    lse: torch.Tensor,
    grad_scale: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
) -> torch.Tensor:
    """The rows' gradient, each row's times ``grad_scale``, from their log-sum-exps ``lse``:
    the backward's pass as one opaque call for torch.compile."""
    options = LossOptions(weight, ignore_index, label_smoothing, z_loss, softcap or None)
    grad = torch.empty(rows.shape, dtype=rows.dtype, device=rows.device)
    kernel = _dispatch.rows_kernel(rows, target, options, grad)
    kernel(rows, target, options, grad_scale, grad, None, known_lse=lse)
    return grad


@_cross_entropy_rows_backward.register_fake
def _(
    rows: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    lse: torch.Tensor,
    grad_scale: torch.Tensor,
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
) -> torch.Tensor:
    return torch.empty(rows.shape, dtype=rows.dtype, device=rows.device)


@torch.library.custom_op("crossent::linear_cross_entropy_pass", mutates_args=())
def _linear_cross_entropy_pass(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    grad_scale: torch.Tensor,
    lse: torch.Tensor,
    has_grad_scale: bool,
    has_lse: bool,
    wants: list[bool],
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    chunk_rows: int,
    low_memory: bool,
    weight_grad_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_run` as one registered operator, so that torch.compile and torch.export see one
    opaque call (no graph break for its label check, threads or chunk loop): losses,
    log-sum-exps, then ∂h, ∂W, ∂b, ∂t (an empty tensor for each not wanted)."""
    options = LossOptions(class_weight, ignore_index, label_smoothing, z_loss, softcap or None)
    call = HeadCall(options, chunk_rows, low_memory, weight_grad_dtype, None, "forward")
    head = Head(hidden, weight, bias, target)
    result = head_pass(
        head, options, call, grad_scale if has_grad_scale else None, tuple(wants),
        lse if has_lse else None,
    )  # fmt: skip
    grad_h, grad_w, grad_b, grad_t = (  # an empty tensor of its own for each missing one
        hidden.new_empty(0) if g is None else g for g in result.gradients()
    )
    row_lse = result.lse.clone() if result.lse is lse else result.lse  # outputs alias no input
    return result.losses, row_lse, grad_h, grad_w, grad_b, grad_t


@_linear_cross_entropy_pass.register_fake
def _(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    class_weight: torch.Tensor | None,
    grad_scale: torch.Tensor,
    lse: torch.Tensor,
    has_grad_scale: bool,
    has_lse: bool,
    wants: list[bool],
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float,
    chunk_rows: int,
    low_memory: bool,
    weight_grad_dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    rows, compute = hidden.shape[0], compute_dtype(hidden.dtype)
    want_h, want_w, want_b, want_t = wants
    if low_memory:  # the tiles' sums are in the compute dtype
        grad_h, accumulate = compute, compute
    else:
        grad_h = hidden.dtype
        accumulate = torch.promote_types(weight_grad_dtype or weight.dtype, weight.dtype)
        if hidden.dtype == torch.float16:
            accumulate = torch.promote_types(accumulate, torch.float32)
    empty = hidden.new_empty(0)
    return (
        empty if has_lse and low_memory else hidden.new_empty(rows, dtype=compute),
        hidden.new_empty(rows, dtype=compute),
        hidden.new_empty(hidden.shape, dtype=grad_h) if want_h else empty,
        weight.new_empty(weight.shape, dtype=accumulate) if want_w else empty,
        weight.new_empty(weight.shape[0], dtype=accumulate)
        if want_b and bias is not None
        else empty,
        torch.empty_like(target) if want_t and target.is_floating_point() else empty,
    )
