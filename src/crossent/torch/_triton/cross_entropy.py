"""Cross entropy in one Triton program per row: the loss, and the gradient once it is asked for.

Per row of index targets (C logits x, weights w, W = Σ_j w_j, smoothing ε, z-loss z, soft-cap
s, f = the row's gradient factor: the reduction's and the upstream gradient's):

    pass 1 (online softmax, arXiv 1805.02867): m = max_j x_j and d = Σ_j exp(x_j − m), updated
           block by block as m' = max(m, max block), d' = d · exp(m − m') + Σ exp(x − m');
           also Σ_j w_j x_j when ε > 0.
           lse = m + log d;  loss = (1 − ε) w_y (lse − x_y) + (ε / C)(W · lse − Σ w x) + z lse²
    pass 2: dx_j = f · (p_j ((1 − ε) w_y + (ε / C) W + 2 z lse) − (1 − ε) w_y [j = y]
                   − (ε / C) w_j),  p_j = exp(x_j − lse);  times 1 − tanh²(x_raw / s) if capped
    A term whose weight ((1 − ε) w_y, or w_j in Σ w x) is 0 is 0, also where its logit is −inf.

The forward runs pass 1 (loss and lse, one read of the logits); the backward runs pass 2 alone
from the saved lse (``KNOWN_LSE``: one more read and one write), with the upstream gradient in
f, so a float16 gradient is rounded once from float32 (as autocast's float32 loss would be).
Accumulation is in float32 whatever the logits' dtype. An ignored row gets loss 0 and
gradient exactly 0, whatever its logits; a label outside [0, C) that is not ``ignore_index``
gets loss NaN and a NaN gradient row (a kernel cannot raise), so a bad label never passes as
a number. Probability targets have their own kernel with the same passes
(:func:`_cross_entropy_probability_rows`). Nothing is synchronised with the host; launches
run on the logits' device and its current stream.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from crossent.torch._spec import LossOptions

# switches set by which optional tensors a call passes (None or not)
_OPTIONAL = {
    "HAS_WEIGHT": lambda a: a["W"] is not None,
    "WRITE_GRAD": lambda a: a["G"] is not None,
}


@triton.jit
def _capped(x, SOFTCAP: tl.constexpr, softcap):
    """s · tanh(x / s), with tanh(a) = 1 − 2 / (exp(2a) + 1) (no libdevice needed)."""
    if SOFTCAP:
        x = softcap * (1.0 - 2.0 / (tl.exp(2.0 * x / softcap) + 1.0))
    return x


@triton.jit
def _row_block(x_row, cols, inside, SOFTCAP: tl.constexpr, softcap):
    """A block of one row's logits in float32, soft-capped; −inf past the row's end, so that
    those lanes add nothing to a max or a sum of exponentials."""
    x = _capped(tl.load(x_row + cols, mask=inside, other=0.0).to(tl.float32), SOFTCAP, softcap)
    return tl.where(inside, x, float("-inf"))


@triton.jit
def _online_lse(m, d, x):
    """One block of the online log-sum-exp (arXiv 1805.02867): the running max m and the sum
    d of exp(x − m) after the block x. A block of −inf only adds 0."""
    m_new = tl.maximum(m, tl.max(x, axis=0))
    shift = tl.where(m_new == float("-inf"), 0.0, m_new)
    return m_new, d * tl.exp(m - shift) + tl.sum(tl.exp(x - shift), axis=0)


@triton.heuristics(_OPTIONAL)
@triton.jit(do_not_specialize=["C", "ignore_index"])
def _cross_entropy_rows(
    X,  # (R, C) logits, rows strided by stride_x, classes by 1
    stride_x,
    Y,  # (R,) int64 labels
    W,  # (C,) float32 class weights, or None
    G,  # (R, C) gradient out, rows strided by stride_g, or None
    stride_g,
    F,  # float32 gradient factor: () for all rows, or (R,)
    stride_f,  # 0 for one factor, 1 for one per row
    LOSS,  # (R,) float32 loss out (not written with KNOWN_LSE)
    LSE,  # (R,) float32 log-sum-exp: out, or in with KNOWN_LSE
    TOTAL_W,  # () float32 Σ_j w_j, or None (then C)
    C,
    ignore_index,
    eps,
    z_loss,
    softcap,
    SMOOTHING: tl.constexpr,
    Z_LOSS: tl.constexpr,
    SOFTCAP: tl.constexpr,
    KNOWN_LSE: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    WRITE_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    total_weight = tl.load(TOTAL_W) if HAS_WEIGHT else C.to(tl.float32)
    x_row = X + row * stride_x
    y = tl.load(Y + row)
    ignored = y == ignore_index
    invalid = ~ignored & ((y < 0) | (y >= C))
    safe_y = tl.where(ignored | invalid, 0, y)
    w_y = tl.load(W + safe_y) if HAS_WEIGHT else 1.0
    label = (1.0 - eps) * w_y

    if KNOWN_LSE:
        lse = tl.load(LSE + row)
    else:  # pass 1: running max m and sum d of exp(x − m), and Σ w x for label smoothing
        m = tl.full((), float("-inf"), tl.float32)
        d = tl.zeros((), tl.float32)
        weighted_x = tl.zeros((), tl.float32)
        for start in range(0, C, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < C
            x = _row_block(x_row, cols, inside, SOFTCAP, softcap)
            m, d = _online_lse(m, d, x)
            if SMOOTHING:
                w = (
                    tl.load(W + cols, mask=inside, other=0.0)
                    if HAS_WEIGHT
                    else inside.to(tl.float32)
                )
                weighted_x += tl.sum(tl.where(inside & (w != 0), w * x, 0.0), axis=0)  # 0 · −inf
        lse = m + tl.log(d)
        x_y = _capped(tl.load(x_row + safe_y).to(tl.float32), SOFTCAP, softcap)
        loss = tl.where(label == 0, 0.0, label * (lse - x_y))  # weight 0: 0, even if x_y = −inf
        if SMOOTHING:
            loss += eps / C * (total_weight * lse - weighted_x)
        if Z_LOSS:
            loss += z_loss * lse * lse
        loss = tl.where(ignored, 0.0, tl.where(invalid, float("nan"), loss))
        tl.store(LOSS + row, loss)
        tl.store(LSE + row, lse)

    # pass 2: the gradient, the row read again and written once
    if WRITE_GRAD:
        factor = tl.load(F + row * stride_f)
        factor = tl.where(invalid, float("nan"), factor)
        coef = label + eps / C * total_weight
        if Z_LOSS:
            coef += 2.0 * z_loss * lse
        g_row = G + row * stride_g
        for start in range(0, C, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < C
            x = _row_block(x_row, cols, inside, SOFTCAP, softcap)
            g = tl.exp(x - lse) * coef - tl.where(cols == safe_y, label, 0.0)
            if SMOOTHING:
                w = tl.load(W + cols, mask=inside, other=0.0) if HAS_WEIGHT else 1.0
                g -= eps / C * w
            if SOFTCAP:
                t = x / softcap
                g *= 1.0 - t * t
            g = tl.where(ignored, 0.0, g * factor)  # exactly 0, whatever lse and x are
            tl.store(g_row + cols, g.to(G.dtype.element_ty), mask=inside)


@triton.jit
def _smoothed(t, W, cols, inside, C, eps, SMOOTHING: tl.constexpr, HAS_WEIGHT: tl.constexpr):
    """v_j = w_j ((1 − ε) t_j + ε / C): the weight each log p_j gets; 0 past the row's end."""
    v = (1.0 - eps) * t + eps / C if SMOOTHING else t
    if HAS_WEIGHT:
        v *= tl.load(W + cols, mask=inside, other=0.0)
    return tl.where(inside, v, 0.0)


@triton.heuristics(_OPTIONAL)
@triton.jit(do_not_specialize=["C"])
def _cross_entropy_probability_rows(
    X, stride_x, T, stride_t, W, G, stride_g, F, stride_f, LOSS, LSE, C, eps, z_loss, softcap,
    SMOOTHING: tl.constexpr, Z_LOSS: tl.constexpr, SOFTCAP: tl.constexpr,
    KNOWN_LSE: tl.constexpr, HAS_WEIGHT: tl.constexpr, WRITE_GRAD: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Probability targets t, one program per row. With v as in :func:`_smoothed` and
    V = Σ_j v_j: loss = V · lse − Σ_{v_j ≠ 0} v_j x_j + z lse² (0 · log 0 = 0), and
    dx_j = f · (p_j (V + 2 z lse) − v_j), times 1 − tanh²(x_raw / s) if capped. With
    ``KNOWN_LSE`` the first pass reads the targets only, for V."""
    row = tl.program_id(0).to(tl.int64)
    x_row, t_row = X + row * stride_x, T + row * stride_t
    m = tl.full((), float("-inf"), tl.float32)
    d = tl.zeros((), tl.float32)
    total_v = tl.zeros((), tl.float32)
    cross = tl.zeros((), tl.float32)
    for start in range(0, C, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < C
        t = tl.load(t_row + cols, mask=inside, other=0.0).to(tl.float32)
        v = _smoothed(t, W, cols, inside, C, eps, SMOOTHING, HAS_WEIGHT)
        total_v += tl.sum(v, axis=0)
        if not KNOWN_LSE:
            x = _row_block(x_row, cols, inside, SOFTCAP, softcap)
            cross += tl.sum(tl.where(v == 0.0, 0.0, v * x), axis=0)  # 0 · (−inf) = 0
            m, d = _online_lse(m, d, x)
    if KNOWN_LSE:
        lse = tl.load(LSE + row)
    else:
        lse = m + tl.log(d)
        loss = total_v * lse - cross
        if Z_LOSS:
            loss += z_loss * lse * lse
        tl.store(LOSS + row, loss)
        tl.store(LSE + row, lse)
    if WRITE_GRAD:
        factor = tl.load(F + row * stride_f)
        coef = total_v + 2.0 * z_loss * lse if Z_LOSS else total_v
        g_row = G + row * stride_g
        for start in range(0, C, BLOCK):
            cols = start + tl.arange(0, BLOCK)
            inside = cols < C
            x = _row_block(x_row, cols, inside, SOFTCAP, softcap)
            t = tl.load(t_row + cols, mask=inside, other=0.0).to(tl.float32)
            v = _smoothed(t, W, cols, inside, C, eps, SMOOTHING, HAS_WEIGHT)
            g = tl.exp(x - lse) * coef - v
            if SOFTCAP:
                c = x / softcap
                g *= 1.0 - c * c
            tl.store(g_row + cols, (g * factor).to(G.dtype.element_ty), mask=inside)


@dataclass(frozen=True)
class Launch:
    """What the launch code picks for a call, besides its tensors: the kernel's compile-time
    switches and ``num_warps``. :func:`plan` is the one place that picks them, so a test can
    compile every configuration a GPU will run (tests/test_triton_compile.py)."""

    probability: bool  # which kernel
    constants: tuple[tuple[str, object], ...]  # constexpr switches, by name
    num_warps: int


def plan(
    classes: int,
    dtype: torch.dtype,
    options: LossOptions,
    probability: bool,
    weighted: bool,
    gradient: bool,
    known_lse: bool,
) -> Launch:
    """The configuration of one launch: a block of up to 4,096 classes for 2-byte logits and
    2,048 for float32 (16 KB a block either way), 4 warps up to 1,024 classes, 8 beyond."""
    block = min(triton.next_power_of_2(max(classes, 1)), 4096 if dtype.itemsize < 4 else 2048)
    constants = {
        "SMOOTHING": options.label_smoothing > 0,
        "Z_LOSS": options.z_loss > 0,
        "SOFTCAP": options.softcap is not None,
        "KNOWN_LSE": known_lse,
        "HAS_WEIGHT": weighted,
        "WRITE_GRAD": gradient,
        "BLOCK": block,
    }
    return Launch(probability, tuple(constants.items()), 4 if block <= 1024 else 8)


def loss_and_grad(
    logits: torch.Tensor,
    target: torch.Tensor,
    options: LossOptions,
    grad_scale: torch.Tensor | float | None,
    grad: torch.Tensor | None,
    lse: torch.Tensor | None = None,
    *,
    known_lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """Row losses ``(R,)`` float32 for logits ``(R, C)`` (unit column stride); fills ``grad``
    (R, C) if given, each row's gradient times ``grad_scale`` (0-d, or one factor per row).

    Index targets ``(R,)`` or probability targets ``(R, C)``. ``lse`` (float32) receives the
    rows' log-sum-exps. With ``known_lse`` (the forward's) only the gradient is computed, and
    the losses returned are an empty tensor.
    """
    rows, classes = logits.shape
    device = logits.device
    losses = torch.empty(rows if known_lse is None else 0, dtype=torch.float32, device=device)
    if rows == 0:
        return losses
    weight = None if options.weight is None else options.weight.to(device, torch.float32)
    weight = None if weight is None else weight.contiguous()
    if grad_scale is None or isinstance(grad_scale, float | int):
        value = 1.0 if grad_scale is None else float(grad_scale)
        factor = torch.full((), value, dtype=torch.float32, device=device)
    else:
        factor = grad_scale.to(device, torch.float32).contiguous()
    if known_lse is not None:
        row_lse = known_lse.to(device, torch.float32).contiguous()
    else:
        row_lse = torch.empty(rows, dtype=torch.float32, device=device)
    launch = plan(
        classes, logits.dtype, options, target.is_floating_point(), weight is not None,
        grad is not None, known_lse is not None,
    )  # fmt: skip
    common = {**dict(launch.constants), "num_warps": launch.num_warps}
    del common["HAS_WEIGHT"], common["WRITE_GRAD"]  # set by which tensors are given
    grad_stride = 0 if grad is None else grad.stride(0)
    per_row = 1 if factor.dim() else 0
    softcap = options.softcap or 1.0
    with _on(device):
        if target.is_floating_point():
            target = target.contiguous()
            _cross_entropy_probability_rows[(rows,)](
                logits, logits.stride(0), target, target.stride(0), weight, grad, grad_stride,
                factor, per_row, losses, row_lse, classes, options.label_smoothing,
                options.z_loss, softcap, **common,
            )  # fmt: skip
        else:
            total = None if weight is None else weight.sum()  # on the device: no host sync
            _cross_entropy_rows[(rows,)](
                logits, logits.stride(0), target, weight, grad, grad_stride, factor, per_row,
                losses, row_lse, total, classes, options.ignore_index, options.label_smoothing,
                options.z_loss, softcap, **common,
            )  # fmt: skip
    if lse is not None and known_lse is None:
        lse.copy_(row_lse)
    return losses


@contextlib.contextmanager
def _on(device: torch.device) -> Iterator[None]:
    """Launches on ``device`` (and its current stream): Triton launches on the current CUDA
    device, which need not be the tensors' (``device_map="auto"`` puts layers on several)."""
    if device.type != "cuda":
        yield
        return
    with torch.cuda.device(device):
        yield
