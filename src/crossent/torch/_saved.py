"""Gradients made in the forward, and their product with the upstream gradient in the backward."""

from __future__ import annotations

from typing import Any

import torch

from crossent._checks import Reduction
from crossent.torch import _reuse


def upstream_of(grad_loss: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    """The upstream gradient as one factor (0-d) or one per row ``(R,)``, in the loss's
    dtype: float32 or float64, also for float16/bfloat16 logits."""
    return grad_loss.reshape(-1) if reduction == "none" else grad_loss


def scale_saved(
    ctx: Any, grads: tuple[torch.Tensor, ...], grad_output: torch.Tensor, name: str
) -> tuple[torch.Tensor, ...]:
    """Gradients computed in the forward, times the upstream gradient ``grad_output``.

    On the CPU a plain ``loss.backward()`` (upstream exactly 1) costs nothing; elsewhere the
    product is taken in place without asking the device whether it is 1 (no host sync), which
    uses the saved gradients up, so a second backward is refused with a clear error. A
    float16/bfloat16 gradient is multiplied in float32 and rounded once.
    """
    upstream = grad_output.reshape(-1, 1) if ctx.reduction == "none" else grad_output
    on_cpu = grads[0].device.type == "cpu" and not torch.compiler.is_compiling()
    if on_cpu and ctx.reduction != "none" and grad_output.item() == 1.0:
        return grads  # loss.backward() on a mean or sum: the gradients are ready as they are
    if ctx.inplace or not on_cpu:
        # torch.compile may trace a backward twice (it speculates again after inserting a
        # copy), and its traced graph is functional: the in-place product uses nothing up
        if not torch.compiler.is_compiling():
            refuse_second_backward(ctx, name)
            ctx.used = True
        return tuple(_times(grad, upstream, in_place=True) for grad in grads)
    return tuple(_times(grad, upstream, in_place=False) for grad in grads)  # kept: retain_graph


def refuse_second_backward(ctx: Any, name: str) -> None:
    """A second backward after the saved gradients were scaled in place: a clear error (called
    before the saved tensors are read, whose version check would raise first, obscurely)."""
    if ctx.used:
        raise RuntimeError(
            f"crossent.torch.{name}: backward ran twice through the same loss; with "
            "inplace_backward=True or on CUDA the gradient is scaled in place, so compute "
            "the loss again instead of retain_graph=True"
        )


def _times(grad: torch.Tensor, upstream: torch.Tensor, *, in_place: bool) -> torch.Tensor:
    """``grad · upstream``, in float32 for a float16/bfloat16 gradient (rounded once)."""
    if grad.dtype in (torch.float32, torch.float64):
        factor = upstream.to(grad.dtype)
        return grad.mul_(factor) if in_place else grad * factor
    product = grad.to(torch.float32) * upstream.to(torch.float32)
    return grad.copy_(product) if in_place else product.to(grad.dtype)


def empty_gradient(rows: torch.Tensor) -> torch.Tensor:
    """An uninitialised buffer like ``rows`` with unit strides; on the CPU memory that is
    already mapped where it can be (:mod:`crossent.torch._reuse`)."""
    if rows.device.type == "cpu":
        return _reuse.empty(tuple(rows.shape), rows.dtype)
    return torch.empty(rows.shape, dtype=rows.dtype, device=rows.device)
