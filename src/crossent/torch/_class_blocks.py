"""Linear + cross entropy a block of classes at a time, in plain PyTorch: the low-memory mode
where there is no GPU, for class counts so large that even a few full rows of logits are
too many.

The algorithm of the Triton kernels (:mod:`crossent.torch._triton.linear_cross_entropy`),
with matrix products of blocks instead of tiles. For each chunk of rows h (r × D) and each
block of classes W_b (B × D), the block's logits x = h W_bᵀ + b_b exist only while that
block is worked on:

    forward   the online log-sum-exp over the blocks: running max m and Σ exp(x − m) per row,
              the target's logit x_y and, for label smoothing, Σ_j x_j.
    backward  each block's logits again, their gradient
              g = f · (exp(x − lse) (1 + 2 z lse) − (1 − ε) [j = y] − ε / C)
              (times 1 − tanh² under soft-capping), then ∂h += g W_b, ∂W_b += gᵀ h,
              ∂b_b += Σ_rows g.

Memory besides the gradients: one r × B block of logits. Flops: 8·N·D·C, the logits being
computed twice. Everything runs in float32 (float64 for float64 inputs) and in a fixed order,
so results are bit-identical from run to run. Index targets, no class weights.
"""

from __future__ import annotations

import math

import torch

from crossent.torch._spec import LossOptions, compute_dtype

ROWS = 256  # rows per chunk: enough for an efficient matrix product on the CPU
BLOCK_BYTES = 32 << 20  # one block of logits at a time, at most


def forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    options: LossOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row losses in nats and log-sum-exps, holding at most :data:`BLOCK_BYTES` of logits."""
    rows, classes = hidden.shape[0], weight.shape[0]
    compute = compute_dtype(hidden.dtype)
    parts = torch.zeros(1, 4, rows, dtype=compute, device=hidden.device)
    parts[0, 0] = -math.inf
    for start, stop in _ranges(rows, ROWS):
        top, total, x_y, x_sum = parts[0, :, start:stop]  # views: updated in place
        y = target[start:stop]
        for first, last in _ranges(classes, _block(stop - start, compute)):
            x, _ = _logits(hidden[start:stop], weight, bias, first, last, options, compute)
            new_top = torch.maximum(top, x.amax(dim=1))
            shift = torch.where(new_top == -math.inf, 0.0, new_top)  # an all −inf block adds 0
            total.mul_(torch.exp(top - shift)).add_(torch.exp(x - shift[:, None]).sum(dim=1))
            top.copy_(new_top)
            inside = (y >= first) & (y < last)
            at = (y - first).clamp(0, last - first - 1)[:, None]
            x_y += torch.where(inside, x.gather(1, at)[:, 0], 0.0)
            if options.label_smoothing:
                x_sum += x.sum(dim=1)
    return row_losses(parts, target, options, classes)


def row_losses(
    parts: torch.Tensor, target: torch.Tensor, options: LossOptions, classes: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Losses and log-sum-exps from partial sums over splits of the classes.

    ``parts`` is (splits, 4, N): per split the running max m, Σ exp(x − m), the target's logit
    (0 where it lies in another split) and Σ x. Then lse = M + log Σ_splits s · exp(m − M)
    and loss = (1 − ε)(lse − x_y) + (ε / C)(C · lse − Σ x) + z lse²; an ignored row's loss
    is 0 and a label outside [0, C) gives NaN.
    """
    top, sums, x_y, x_sum = parts[:, 0], parts[:, 1], parts[:, 2].sum(0), parts[:, 3].sum(0)
    m = top.amax(0)
    lse = m + torch.log((sums * torch.exp(top - m)).sum(0))
    eps = options.label_smoothing
    loss = (1 - eps) * (lse - x_y) + eps / classes * (classes * lse - x_sum)
    if options.z_loss:
        loss = loss + options.z_loss * lse * lse
    ignored = target == options.ignore_index
    invalid = ~ignored & ((target < 0) | (target >= classes))
    return torch.where(ignored, 0.0, torch.where(invalid, math.nan, loss)), lse


def gradients(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    options: LossOptions,
    lse: torch.Tensor,
    grad_scale: torch.Tensor,
    wants: tuple[bool, ...],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """∂h, ∂W, ∂b (those in ``wants``) in the compute dtype, each row's times ``grad_scale``."""
    rows, classes, compute = hidden.shape[0], weight.shape[0], compute_dtype(hidden.dtype)
    d_h, d_w, d_b = gradient_sums(hidden, weight, bias, wants, compute)
    eps, keep = options.label_smoothing, target != options.ignore_index
    factor = torch.where(keep, grad_scale.to(compute), 0.0)  # 0-d or (N,) → (N,)
    coef = 1.0 + 2.0 * options.z_loss * lse
    for start, stop in _ranges(rows, ROWS):
        h = hidden[start:stop].to(compute)
        y = target[start:stop]
        for first, last in _ranges(classes, _block(stop - start, compute)):
            x, capped = _logits(h, weight, bias, first, last, options, compute)
            g = torch.exp(x - lse[start:stop, None]).mul_(coef[start:stop, None])
            inside = keep[start:stop] & (y >= first) & (y < last)
            at = (y - first).clamp(0, last - first - 1)[:, None]
            g.scatter_add_(1, at, inside.to(compute)[:, None] * (eps - 1.0))
            if eps:
                g.sub_(eps / classes)
            if capped is not None:
                g.mul_(1 - capped * capped)
            g.mul_(factor[start:stop, None]).masked_fill_(~keep[start:stop, None], 0.0)
            if d_h is not None:
                d_h[start:stop].addmm_(g, weight[first:last].to(compute))
            if d_w is not None:
                d_w[first:last].addmm_(g.T, h)
            if d_b is not None:
                d_b[first:last] += g.sum(dim=0)
    return d_h, d_w, d_b


def gradient_sums(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    wants: tuple[bool, ...],
    dtype: torch.dtype,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """Zeroed sums for ∂h, ∂W and ∂b in ``dtype``, each only if ``wants`` asks for it."""
    want_h, want_w, want_b = (*wants, False, False, False)[:3]
    zeros = hidden.new_zeros
    return (
        zeros(hidden.shape, dtype=dtype) if want_h else None,
        zeros(weight.shape, dtype=dtype) if want_w else None,
        zeros(weight.shape[0], dtype=dtype) if want_b and bias is not None else None,
    )


def _logits(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    first: int,
    last: int,
    options: LossOptions,
    compute: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One block's logits in the compute dtype, soft-capped, and tanh(x / s) when capped."""
    x = hidden.to(compute) @ weight[first:last].to(compute).T
    if bias is not None:
        x += bias[first:last].to(compute)
    if options.softcap is None:
        return x, None
    capped = torch.tanh(x / options.softcap)
    return capped * options.softcap, capped


def _block(rows: int, dtype: torch.dtype) -> int:
    """Classes per block: what fits in :data:`BLOCK_BYTES` for ``rows`` rows, at least 1."""
    return max(1, BLOCK_BYTES // (max(rows, 1) * torch.finfo(dtype).bits // 8))


def _ranges(count: int, step: int) -> list[tuple[int, int]]:
    return [(start, min(count, start + step)) for start in range(0, count, step)]
