"""The loss's gradients in differentiable torch ops: double backward and torch.func.

The fast backends compute the gradient of the logits with no autograd graph. When the backward
itself must be differentiated — ``torch.autograd.grad(..., create_graph=True)`` for a gradient
penalty, meta-learning or a Hessian-vector product, and every ``torch.func`` transform, which
differentiates with a graph — the gradients come from here instead, written out in torch ops
that autograd can differentiate again. For one example with logits x (capped to
s · tanh(x_raw / s), p = softmax(x)) and a factor f (the upstream gradient over the
reduction's denominator, in the unit of ``base``):

    index target y:   ∂/∂x_j = f · (p_j ((1 − ε) w_y + (ε / C) W + 2 z lse) − (1 − ε) w_y [j = y]
                                     − (ε / C) w_j)
    prob. target t:   ∂/∂x_j = f · (p_j (V + 2 z lse) − v_j),   v = w ((1 − ε) t + ε / C), V = Σ v
                      ∂/∂t_j = −f (1 − ε) w_j log p_j

times 1 − tanh²(x_raw / s) under soft-capping; an ignored example's rows are exactly 0, also
where its logits are not finite (they are replaced by 0 before anything is computed on them).
"""

from __future__ import annotations

import torch

from crossent.torch._rows import denominators, grad_factor
from crossent.torch._spec import LossOptions, compute_dtype


def logits_gradients(
    x_raw: torch.Tensor,
    target: torch.Tensor,
    options: LossOptions,
    factor: torch.Tensor,
    classes: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """∂/∂x of Σ_i f_i loss_i for rows ``x_raw`` (R, C), in the logits' dtype, and ∂/∂t for
    probability targets ``(R, C)`` (None for index targets ``(R,)``). ``factor`` is one f per
    row ``(R,)`` or one for all (0-d). ``classes``: C of the smoothing term, if not R's."""
    compute = compute_dtype(x_raw.dtype)
    count = x_raw.shape[1] if classes is None else classes
    eps, z = options.label_smoothing, options.z_loss
    weight = None if options.weight is None else options.weight.to(x_raw.device, compute)
    f = factor.to(compute).expand(x_raw.shape[0])
    x = x_raw.to(compute)
    keep = None
    if not target.is_floating_point():
        keep = target != options.ignore_index
        x = torch.where(keep[:, None], x, 0.0)  # an ignored row's logits may be ±inf or NaN
        f = torch.where(keep, f, 0.0)
    tangent = None
    if options.softcap is not None:
        tangent = torch.tanh(x / options.softcap)
        x = options.softcap * tangent
    lse = torch.logsumexp(x, dim=1)
    p = torch.exp(x - lse[:, None])
    if keep is not None:
        grad_x = _index_gradient(p, lse, target, keep, weight, eps, z, count)
        grad_t = None
    else:
        t = target.to(compute)
        v = (1 - eps) * t + eps / count
        if weight is not None:
            v = v * weight
        grad_x = p * (v.sum(dim=1) + 2 * z * lse)[:, None] - v
        log_p = x - lse[:, None]
        w = 1.0 if weight is None else weight
        grad_t = (-(1 - eps) * w * log_p * f[:, None]).to(target.dtype)
    if tangent is not None:
        grad_x = grad_x * (1 - tangent * tangent)
    grad_x = grad_x * f[:, None]
    if keep is not None:
        grad_x = torch.where(keep[:, None], grad_x, 0.0)
    return grad_x.to(x_raw.dtype), grad_t


def _index_gradient(
    p: torch.Tensor,
    lse: torch.Tensor,
    target: torch.Tensor,
    keep: torch.Tensor,
    weight: torch.Tensor | None,
    eps: float,
    z: float,
    classes: int,
) -> torch.Tensor:
    """p_j · coef − (1 − ε) w_y [j = y] − (ε / C) w_j, before the factor."""
    safe = torch.where(keep, target, 0)
    w_y = torch.ones_like(lse) if weight is None else weight[safe]
    label = (1 - eps) * w_y
    total = float(classes) if weight is None else weight.sum()
    coef = label + eps / classes * total + 2 * z * lse
    grad = p * coef[:, None]
    grad = grad - torch.zeros_like(grad).scatter(1, safe[:, None], label[:, None])
    if eps:
        grad = grad - eps / classes * (1.0 if weight is None else weight)
    return grad


def head_gradients(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    options: LossOptions,
    grad_loss: torch.Tensor,
) -> tuple[torch.Tensor | None, ...]:
    """The linear head's gradients (∂h, ∂W, ∂b, ∂t) in differentiable torch ops, through
    its logits x = h Wᵀ + b: ∂h = g W, ∂W = gᵀ h, ∂b = Σ_rows g, with g = ∂/∂x."""
    logits = torch.nn.functional.linear(hidden, weight, bias)
    factor = grad_factor(options.reduction, denominators(target, options), options.scale)
    upstream = grad_loss.reshape(-1) if options.reduction == "none" else grad_loss
    grad_x, grad_t = logits_gradients(logits, target, options, factor * upstream.double())
    grad_b = None if bias is None else grad_x.sum(dim=0)
    return grad_x @ weight, grad_x.T @ hidden, grad_b, grad_t
