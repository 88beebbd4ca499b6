"""``cross_entropy``: the public function, its autograd Function, and what torch.compile sees.

Where the gradient is computed:

- **in the forward** on the CPU for float32 and float64 logits: one pass writes every row's
  loss and its gradient, already scaled for the reduction, so a plain ``loss.backward()``
  costs nothing more (other upstream gradients: one product);
- **in the backward** on CUDA and for float16/bfloat16 logits: the forward keeps each row's
  log-sum-exp, and the backward computes the gradient from the logits with every factor —
  the reduction's and the upstream gradient, in float32 — and rounds it once, as autocast's
  float32 loss would (a GradScaler's 65,536 never meets float16 arithmetic). On a GPU this
  also reads the logits twice in all, not three times;
- **in differentiable torch ops** when the backward is itself differentiated
  (``create_graph=True``) and under ``torch.func`` (:mod:`crossent.torch._differentiable`).

The logits are kept for the backward (a reference, not a copy), except with
``inplace_backward=True``, where the gradient overwrites them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch

from crossent._checks import Reduction, check_index_range
from crossent.torch import (  # noqa: F401 (_library registers the operators)
    _differentiable,
    _dispatch,
    _library,
    _native_rows,
)
from crossent.torch._rows import (
    as_rows,
    classes_of,
    denominators,
    example_shape,
    from_rows,
    grad_factor,
    host_denominator,
    host_factor,
    reduce_rows,
    target_rows,
)
from crossent.torch._saved import (
    empty_gradient,
    refuse_second_backward,
    scale_saved,
    upstream_of,
)
from crossent.torch._spec import LossOptions, compute_dtype, legacy_reduction, with_options_doc
from crossent.torch._torch_ops import Shard, weight_slice

Gradient = Literal["forward", "backward", "none"]


def cross_entropy(
    input: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    base: float = math.e,
    inplace_backward: bool = False,
) -> torch.Tensor:
    """Cross entropy H(y, softmax(logits)) of targets under logits, a drop-in for PyTorch's.

    The arguments of ``torch.nn.functional.cross_entropy``, in its order (``input`` the
    logits; the deprecated ``size_average`` and ``reduce`` read as PyTorch reads them, with
    its warning), then crossent's own, keyword-only. For each example, in nats (divided by
    ln ``base``), with class weights w, label smoothing ε and soft-capped logits
    x = s · tanh(x_raw / s) when ``softcap`` = s:

        index target y:   −(1 − ε) w_y log p_y − (ε / C) Σ_j w_j log p_j + z · lse(x)²
        prob. target t:   −Σ_j w_j ((1 − ε) t_j + ε / C) log p_j + z · lse(x)²

    with p = softmax(x), 0 · log 0 = 0 and z = ``z_loss``. Where PyTorch's
    ``F.cross_entropy`` is right this equals it; where it is not, this follows the math:
    an ignored example has loss 0 and gradient exactly 0 even with −inf logits, a probability
    target of 0 where the logit is −inf contributes 0, and a "mean" over no examples is 0 with
    a zero gradient (PyTorch: NaN). Logits and probability targets get gradients; the
    backward may itself be differentiated, and ``torch.func`` transforms apply.

    Args:
        input: the logits, ``(N, C)``, ``(N, C, d1, ...)`` or ``(C,)``; float16/bfloat16 are
            computed and the loss returned in float32, the gradient in the logits' dtype.
        target: class indices ``(N,)`` / ``(N, d1, ...)`` (int64), or probabilities of the
            logits' shape.
        size_average, reduce: PyTorch's deprecated forms of ``reduction``, read as PyTorch
            reads them (with its warning).
        {options}
        inplace_backward: write the gradient over the logits to save memory; the logits are
            then destroyed, so only use it when nothing else needs them (no double backward).

    >>> x = torch.tensor([[2.0, 0.0, -1.0]]); y = torch.tensor([0])
    >>> bool(torch.isclose(cross_entropy(x, y), torch.nn.functional.cross_entropy(x, y)))
    True
    >>> cross_entropy(x, y, base=2)  # the same loss in bits
    tensor(0.2450)
    """
    reduction = legacy_reduction(size_average, reduce, reduction)
    options = LossOptions.of(
        weight, ignore_index, label_smoothing, z_loss, softcap, reduction, base
    )
    return loss_of(input, target, options, inplace_backward)


with_options_doc(cross_entropy)


def loss_of(
    logits: torch.Tensor,
    target: torch.Tensor,
    options: LossOptions,
    inplace: bool = False,
    shard: Shard | None = None,
) -> torch.Tensor:
    """:func:`cross_entropy` with its options gathered: checks, then the Function."""
    check_logits(logits, target, options, shard)
    if inplace and target.requires_grad:
        raise ValueError(
            "`inplace_backward=True` overwrites the logits, which the target's gradient needs; "
            "pass inplace_backward=False for a target that requires grad"
        )
    call = _Call(options.with_weight(None), inplace, shard, _where_gradient(logits))
    loss: torch.Tensor = _apply(logits, target, options.weight, call)[0]
    return loss


def _apply(*args: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``_CrossEntropy.apply(*args)``. Eagerly and outside torch.func transforms, autograd's
    own entry is called directly: ``Function.apply`` binds a Function's default arguments with
    ``inspect.signature`` on every call when it has ``setup_context``, which cost more than a
    small loss itself (docs/benchmarks.md, small losses)."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        result = _CrossEntropy.apply(*args)  # type: ignore[no-untyped-call]
    else:
        result = super(torch.autograd.Function, _CrossEntropy).apply(*args)  # type: ignore[no-untyped-call]
    return result  # type: ignore[no-any-return]


def check_logits(
    logits: torch.Tensor, target: torch.Tensor, options: LossOptions, shard: Shard | None = None
) -> None:
    """The logits' dtype, the target's shape, the class weights and the target's options."""
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
    options.check_target(target)
    options.check_classes(classes_of(logits) if shard is None else shard.classes)


@dataclass(frozen=True)
class _Call:
    """What a call of the Function is, besides its tensors."""

    options: LossOptions  # without the class weights, which are an input
    inplace: bool
    shard: Shard | None
    gradient: Gradient  # where the logits' gradient is computed


def _where_gradient(logits: torch.Tensor) -> Gradient:
    """The forward computes the logits' gradient for float32/float64 rows that the Triton
    kernels do not take (on the CPU: rows in cache, one read); else the backward does, from
    the logits and their log-sum-exps."""
    if not (logits.requires_grad and torch.is_grad_enabled()):
        return "none"
    if transformed():
        return "backward"  # the backward's torch ops are differentiated and vmapped
    wide = logits.dtype in (torch.float32, torch.float64)
    return "forward" if wide and not _dispatch.uses_triton(logits) else "backward"


def transformed(*tensors: torch.Tensor) -> bool:
    """Whether a torch.func transform is running (or holds one of ``tensors``); never while
    torch.compile traces (it compiles its own transforms)."""
    if torch.compiler.is_compiling():
        return False
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return torch._C._are_functorch_transforms_active() or any(map(wrapped, tensors))


class _CrossEntropy(torch.autograd.Function):
    """(logits, target, weight) → (loss, gradient of the logits or an empty tensor, lse)."""

    @staticmethod
    def forward(
        logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None, call: _Call
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        options = call.options.with_weight(weight)
        rows, row_target = as_rows(logits), target_rows(target)
        denominator: torch.Tensor | float
        factor: torch.Tensor | float
        if _on_host(
            rows
        ):  # the reduction's numbers in Python: a torch op costs more than a small loss
            denominator = host_denominator(row_target, options)
            factor = host_factor(options.reduction, denominator, options.scale)
        else:
            denominator = denominators(row_target, options)
            factor = grad_factor(options.reduction, denominator, options.scale)
        losses, grad, lse = _pass(rows, logits, row_target, options, call, factor)
        if options.scale != 1.0:  # nats, the default, need no product
            losses = losses * options.scale
        loss = reduce_rows(losses, denominator, options.reduction)
        if options.reduction == "none":
            loss = loss.reshape(example_shape(logits))
        return loss, grad, lse

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Any, ...]) -> None:
        logits, target, weight, call = inputs
        _, grad, lse = output
        ctx.mark_non_differentiable(grad, lse)
        ctx.set_materialize_grads(False)  # not N × C zeros for the gradient output's "gradient"
        ctx.call, ctx.shape, ctx.used = call, logits.shape, False
        ctx.reduction, ctx.inplace = call.options.reduction, call.inplace  # as scale_saved reads
        kept = None if call.inplace and call.gradient == "forward" else logits
        ctx.save_for_backward(kept, target, weight, grad, lse)

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor | None, *_: Any) -> tuple[Any, ...]:
        if grad_loss is None:  # nothing flows back into the loss
            return None, None, None, None
        refuse_second_backward(ctx, "cross_entropy")
        logits, target, weight, grad, lse = ctx.saved_tensors
        call: _Call = ctx.call
        want_x, want_t = ctx.needs_input_grad[:2]
        grad_x = grad_t = None
        if torch.is_grad_enabled() or transformed(grad_loss):  # the backward is differentiated
            _check_differentiable(logits, call)
            rows = _Backward.of(logits, target, weight, call, grad_loss)
            grad_x, grad_t = _differentiable.logits_gradients(
                rows.rows, rows.target, rows.options, rows.factor
            )
        elif want_x and call.gradient == "forward":
            grad_x = scale_saved(ctx, (grad,), grad_loss, "cross_entropy")[0]
        elif want_x:
            grad_x = _Backward.of(logits, target, weight, call, grad_loss).logits_gradient(
                lse, call
            )
        if want_t and grad_t is None:
            grad_t = _Backward.of(logits, target, weight, call, grad_loss).target_gradient(lse)
        grad_x = None if grad_x is None or not want_x else from_rows(grad_x, ctx.shape)
        grad_t = None if grad_t is None or not want_t else from_rows(grad_t, ctx.shape)
        return grad_x, grad_t, None, None

    @staticmethod
    def vmap(info: Any, in_dims: tuple[Any, ...], *args: Any) -> tuple[Any, Any]:
        return _vmap(info, in_dims, *args)


def _on_host(rows: torch.Tensor) -> bool:
    """Eagerly on the CPU: labels are checked (a GPU would wait for the answer; torch.compile
    cannot trace a data-dependent check) and the reduction's numbers are Python's."""
    return rows.device.type == "cpu" and not torch.compiler.is_compiling()


def _pass(
    rows: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    options: LossOptions,
    call: _Call,
    factor: torch.Tensor | float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward's pass over the rows: losses (nats), the gradient if it is made here (else
    an empty tensor) and the log-sum-exps. Labels outside the classes are refused on the CPU:
    by the compiled kernel itself, else before the pass."""
    wants = call.gradient == "forward"
    if torch.compiler.is_compiling() and call.shard is None:  # one opaque operator
        losses, lse, grad = torch.ops.crossent.cross_entropy_rows(
            rows, target, options.weight, options.ignore_index, options.label_smoothing,
            options.z_loss, options.softcap or 0.0, factor, wants,
        )  # fmt: skip
        return losses, grad, lse
    # eager: the same pass without the operator's dispatch, which costs more than a small loss
    in_place = call.inplace and wants and rows.data_ptr() == logits.data_ptr()
    grad = rows if in_place else empty_gradient(rows) if wants else rows.new_empty(0)
    lse = rows.new_empty(rows.shape[0], dtype=compute_dtype(rows.dtype))
    kernel = _dispatch.rows_kernel(rows, target, options, grad if wants else None, call.shard)
    if (
        not target.is_floating_point()
        and _on_host(rows)
        and kernel is not _native_rows.loss_and_grad
    ):
        classes = rows.shape[1] if call.shard is None else call.shard.classes
        check_index_range("target", target, classes, options.ignore_index)
    losses = kernel(rows, target, options, factor, grad if wants else None, lse)
    return losses, grad, lse


@dataclass(frozen=True)
class _Backward:
    """What the backward's passes start from: the rows and each row's gradient factor f, the
    reduction's (1 / its denominator, in the unit of ``base``) times the upstream gradient,
    float64: one for all rows (0-d) or one per row."""

    options: LossOptions
    logits: torch.Tensor
    rows: torch.Tensor
    target: torch.Tensor
    factor: torch.Tensor
    shard: Shard | None  # the classes the rows hold, of all processes' (None: all of them)

    @classmethod
    def of(
        cls,
        logits: torch.Tensor,
        target: torch.Tensor,
        weight: torch.Tensor | None,
        call: _Call,
        grad_loss: torch.Tensor,
    ) -> _Backward:
        options = call.options.with_weight(weight)
        rows, row_target = as_rows(logits), target_rows(target)
        factor = grad_factor(options.reduction, denominators(row_target, options), options.scale)
        upstream = upstream_of(grad_loss, options.reduction)
        return cls(options, logits, rows, row_target, factor * upstream, call.shard)

    def logits_gradient(self, lse: torch.Tensor, call: _Call) -> torch.Tensor:
        """The logits' gradient: every factor in float32 (float64 for float64 logits), the
        result rounded once to the logits' dtype."""
        rows, target, options = self.rows, self.target, self.options
        factor = self.factor.to(compute_dtype(rows.dtype))
        if torch.compiler.is_compiling() and call.shard is None:
            grad: torch.Tensor = torch.ops.crossent.cross_entropy_rows_backward(
                rows, target, options.weight, lse, factor, options.ignore_index,
                options.label_smoothing, options.z_loss, options.softcap or 0.0,
            )  # fmt: skip
            return grad
        in_place = call.inplace and rows.data_ptr() == self.logits.data_ptr()
        grad = rows if in_place else torch.empty(rows.shape, dtype=rows.dtype, device=rows.device)
        kernel = _dispatch.rows_kernel(rows, target, options, grad, call.shard)
        kernel(rows, target, options, factor, grad, None, known_lse=lse)
        return grad

    def target_gradient(self, lse: torch.Tensor) -> torch.Tensor:
        """∂loss/∂t_j = −f (1 − ε) w_j log p_j for probability targets, log p_j = x_j − lse
        (with the capped x)."""
        options, compute = self.options, compute_dtype(self.rows.dtype)
        x = self.rows.to(compute)
        if options.softcap is not None:
            x = options.softcap * torch.tanh(x / options.softcap)
        f = self.factor.to(compute).reshape(-1, 1)
        w: torch.Tensor | float = 1.0
        if options.weight is not None:  # this shard's classes' weights
            w = weight_slice(options.weight, self.shard, self.rows.shape[1]).to(compute)
        log_p = x - lse.to(compute)[:, None]
        return (-(1 - options.label_smoothing) * w * log_p * f).to(self.target.dtype)


def _check_differentiable(logits: torch.Tensor | None, call: _Call) -> None:
    """The gradients in differentiable torch ops need the logits and one process."""
    if logits is None:
        raise RuntimeError(
            "crossent.torch.cross_entropy: double backward (create_graph=True, or a torch.func "
            "transform) needs the logits, which inplace_backward=True overwrote; pass "
            "inplace_backward=False"
        )
    if call.shard is not None:
        raise RuntimeError(
            "crossent.torch.distributed: the vocabulary-parallel losses have no double backward "
            "(create_graph=True) or torch.func support: their gradient is not a graph"
        )


def _vmap(
    info: Any,
    in_dims: tuple[Any, ...],
    logits: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor | None,
    call: _Call,
) -> tuple[Any, Any]:
    """``torch.func.vmap``'s rule: the vmapped dimension folded into the examples, which are
    independent, then each slice's sum or mean taken apart — exact. Class weights that differ
    by slice are computed slice by slice."""
    size = info.batch_size
    x = _batch_first(logits, in_dims[0], size)
    t = _batch_first(target, in_dims[1], size)
    if weight is not None and in_dims[2] is not None:
        w = _batch_first(weight, in_dims[2], size)
        losses = [
            _CrossEntropy.apply(x[b], t[b], w[b], call)[0]  # type: ignore[no-untyped-call]
            for b in range(size)
        ]
        return (torch.stack(losses), x.new_empty(0), x.new_empty(0)), (0, None, None)
    one = x.shape[1:]
    folded_x = x.reshape(size * one[0], *one[1:]) if len(one) > 1 else x
    folded_t = t.reshape(size * t.shape[1], *t.shape[2:]) if len(one) > 1 else t
    each = replace(call, options=replace(call.options, reduction="none"))
    losses = _CrossEntropy.apply(folded_x, folded_t, weight, each)[0]  # type: ignore[no-untyped-call]
    losses = losses.reshape(size, *example_shape(x[0]))
    reduction = call.options.reduction
    if reduction == "none":
        return (losses, x.new_empty(0), x.new_empty(0)), (0, None, None)
    options = call.options.with_weight(weight)
    denominator = denominators(target_rows(folded_t), options, size)
    total = reduce_rows(losses.reshape(-1), denominator, reduction)
    return (total.reshape(size), x.new_empty(0), x.new_empty(0)), (0, None, None)


def _batch_first(tensor: torch.Tensor, dim: int | None, size: int) -> torch.Tensor:
    """``tensor`` with its vmapped dimension first (expanded when it has none)."""
    if dim is None:
        return tensor.expand(size, *tensor.shape)
    return tensor.movedim(dim, 0)
