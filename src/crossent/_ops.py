"""Elementwise operations that keep the convention 0 · log 0 = 0 in values *and* gradients.

IEEE arithmetic gives 0 · (−inf) = NaN, and autograd spreads that NaN: d(p · log p)/dp through
``exp`` of a −inf log-probability multiplies −inf by 0. Measure theory says 0 · (±inf) = 0, and
so does the limit p log p → 0. These three functions apply that rule in the forward pass and in
every gradient, so a class with probability 0 contributes exactly 0 to a value and its gradient,
while a target mass on a class of model probability 0 still gives +inf, as the math says.
"""

from __future__ import annotations

from typing import Any

import torch


class _TimesLog(torch.autograd.Function):
    """weight · log_value, with weight finite and 0 · (−inf) = 0."""

    @staticmethod
    def forward(weight: torch.Tensor, log_value: torch.Tensor) -> torch.Tensor:
        return torch.where(weight == 0, 0.0, weight * log_value)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor, torch.Tensor], output: Any) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        weight, log_value = ctx.saved_tensors
        # d/dweight = log_value (−inf stays −inf: the one-sided derivative); d/dlog_value = weight.
        grad_weight = times_log(grad, log_value) if ctx.needs_input_grad[0] else None
        grad_log_value = grad * weight if ctx.needs_input_grad[1] else None
        return grad_weight, grad_log_value


class _Log(torch.autograd.Function):
    """log x whose gradient g / x is 0 where g is 0, also at x = 0 (where IEEE gives 0/0)."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.log(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor], output: Any) -> None:
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return torch.where(grad == 0, 0.0, grad / x)


class _Exp(torch.autograd.Function):
    """exp x whose gradient g · exp x is 0 where exp x is 0, also when g is ±inf."""

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return torch.exp(x)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[torch.Tensor], output: torch.Tensor) -> None:
        ctx.save_for_backward(output)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (value,) = ctx.saved_tensors
        return times_log(value, grad)


def times_log(weight: torch.Tensor, log_value: torch.Tensor) -> torch.Tensor:
    """``weight · log_value`` with 0 · (±inf) = 0; ``weight`` must be finite."""
    if not tracked(weight, log_value):
        return _TimesLog.forward(weight, log_value)
    result: torch.Tensor = _TimesLog.apply(weight, log_value)  # type: ignore[no-untyped-call]
    return result


def log(x: torch.Tensor) -> torch.Tensor:
    """Natural log, −inf at 0, with a gradient that is 0 wherever the upstream gradient is 0."""
    if not tracked(x):
        return torch.log(x)
    result: torch.Tensor = _Log.apply(x)  # type: ignore[no-untyped-call]
    return result


def exp(x: torch.Tensor) -> torch.Tensor:
    """exp, with a gradient that is 0 where exp x = 0 (x = −inf), whatever flows into it."""
    if not tracked(x):
        return torch.exp(x)
    result: torch.Tensor = _Exp.apply(x)  # type: ignore[no-untyped-call]
    return result


def tracked(*tensors: torch.Tensor) -> bool:
    """Whether autograd records an operation on these tensors (else the plain forward will do)."""
    return torch.is_grad_enabled() and any(tensor.requires_grad for tensor in tensors)
