"""Linear + cross entropy in Triton, tile by tile: no logits, not even a chunk of them.

The low-memory mode of :func:`crossent.torch.linear_cross_entropy`. A tile of logits
x = h Wᵀ + b (BM rows × BN classes) is a blockwise matrix product accumulated in float32 and
lives only in registers:

    forward   grid (row blocks, class splits): each program walks its share of the class
              blocks with an online log-sum-exp (arXiv 1805.02867) — running max m and
              Σ exp(x − m) per row — and picks up the target's logit x_y and, for label
              smoothing, Σ_j x_j. The splits' partial sums are combined on the device.
    backward  grid (row blocks, class blocks): the tile of logits is computed again, turned
              into its gradient g = f · (p · (1 + 2 z lse) − (1 − ε) [j = y] − ε / C)
              (times 1 − tanh² under soft-capping), and multiplied out at once:
              ∂h += g W_tile and ∂W_tile += gᵀ h, added atomically in float32; ∂b += Σ_rows g.

So the forward costs 2·N·D·C flops and the gradients 6·N·D·C (8 in all, the logits being
computed twice) and the only memory besides the float32 gradient sums is O(N). Atomic
additions make the gradients' last bits depend on the order the tiles finish in: this mode is
not bit-deterministic (the chunked mode is). Class weights are not supported here.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from crossent.torch._class_blocks import gradient_sums, row_losses
from crossent.torch._cpu import Options
from crossent.torch._triton.cross_entropy import _capped


@triton.jit
def _logits_tile(
    H, Wt, B, rows, cols, N, C, D, softcap,
    HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    """Logits of ``rows`` × ``cols`` in float32: Σ_k h[i, k] W[j, k] + b[j], soft-capped."""
    acc = tl.zeros((BM, BN), tl.float32)
    for k in range(0, D, BK):
        ks = k + tl.arange(0, BK)
        a = tl.load(
            H + rows[:, None] * D + ks[None, :],
            mask=(rows[:, None] < N) & (ks[None, :] < D),
            other=0.0,
        )
        b = tl.load(
            Wt + cols[None, :] * D + ks[:, None],
            mask=(cols[None, :] < C) & (ks[:, None] < D),
            other=0.0,
        )
        acc = tl.dot(_operand(a, UPCAST), _operand(b, UPCAST), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(B + cols, mask=cols < C, other=0.0).to(tl.float32)[None, :]
    return _capped(acc, SOFTCAP, softcap)


@triton.jit
def _operand(x, UPCAST: tl.constexpr):
    """A matrix product's operand; float32 under the interpreter, whose bfloat16 products
    are wrong (Triton 3.9), rounded to the input dtype first so the numbers stay the same."""
    if UPCAST:
        x = x.to(tl.float32)
    return x


@triton.jit
def _forward(
    H, Wt, B, Y, PARTS, N, C, D, blocks_per_split, softcap,
    HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, SMOOTHING: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    BK: tl.constexpr,
):  # fmt: skip
    """Per row and class split: running max, Σ exp(x − max), x_y and Σ_j x_j into PARTS."""
    split = tl.program_id(1)
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    y = tl.load(Y + rows, mask=rows < N, other=-1)
    m = tl.full((BM,), float("-inf"), tl.float32)
    s = tl.zeros((BM,), tl.float32)
    x_y = tl.zeros((BM,), tl.float32)
    x_sum = tl.zeros((BM,), tl.float32)
    first = split * blocks_per_split
    last = tl.minimum(first + blocks_per_split, tl.cdiv(C, BN))
    for block in range(first, last):
        cols = block * BN + tl.arange(0, BN)
        x = _logits_tile(
            H, Wt, B, rows, cols, N, C, D, softcap, HAS_BIAS, SOFTCAP, PRECISION, UPCAST, BM, BN, BK
        )
        inside = cols[None, :] < C
        x = tl.where(inside, x, float("-inf"))
        m_new = tl.maximum(m, tl.max(x, axis=1))
        shift = tl.where(m_new == float("-inf"), 0.0, m_new)
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(x - shift[:, None]), axis=1)
        m = m_new
        x_y += tl.sum(tl.where(cols[None, :] == y[:, None], x, 0.0), axis=1)
        if SMOOTHING:
            x_sum += tl.sum(tl.where(inside, x, 0.0), axis=1)
    out = PARTS + split * 4 * N + rows
    keep = rows < N
    tl.store(out, m, mask=keep)
    tl.store(out + N, s, mask=keep)
    tl.store(out + 2 * N, x_y, mask=keep)
    tl.store(out + 3 * N, x_sum, mask=keep)


@triton.jit
def _backward(
    H, Wt, B, Y, LSE, F, stride_f, DH, DW, DB, N, C, D, ignore_index, eps, z_loss, softcap,
    HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, SMOOTHING: tl.constexpr,
    Z_LOSS: tl.constexpr, WANT_H: tl.constexpr, WANT_W: tl.constexpr, WANT_B: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    BK: tl.constexpr,
):  # fmt: skip
    """One tile's gradient of the logits, multiplied out into ∂h, ∂W and ∂b (atomic adds)."""
    rows = tl.program_id(0) * BM + tl.arange(0, BM)
    cols = tl.program_id(1) * BN + tl.arange(0, BN)
    x = _logits_tile(
        H, Wt, B, rows, cols, N, C, D, softcap, HAS_BIAS, SOFTCAP, PRECISION, UPCAST, BM, BN, BK
    )
    live = rows < N
    lse = tl.load(LSE + rows, mask=live, other=0.0)
    y = tl.load(Y + rows, mask=live, other=ignore_index)
    ignored = (y == ignore_index) | ~live
    invalid = ~ignored & ((y < 0) | (y >= C))
    factor = tl.load(F + rows * stride_f, mask=live, other=0.0)
    factor = tl.where(ignored, 0.0, tl.where(invalid, float("nan"), factor))
    coef = 1.0 + 2.0 * z_loss * lse if Z_LOSS else tl.full((BM,), 1.0, tl.float32)
    g = tl.exp(x - lse[:, None]) * coef[:, None]
    g -= tl.where(cols[None, :] == y[:, None], 1.0 - eps, 0.0)
    if SMOOTHING:
        g -= eps / C
    if SOFTCAP:
        t = x / softcap
        g *= 1.0 - t * t
    # ignored rows: exactly 0, also where their logits are ±inf (0 · inf would be NaN)
    g = tl.where((cols[None, :] < C) & ~ignored[:, None], g * factor[:, None], 0.0)
    if WANT_B:
        tl.atomic_add(DB + cols, tl.sum(g, axis=0), mask=cols < C)
    g_in = _operand(g.to(H.dtype.element_ty), UPCAST)
    for k in range(0, D, BK):
        ks = k + tl.arange(0, BK)
        if WANT_H:
            w = tl.load(
                Wt + cols[:, None] * D + ks[None, :],
                mask=(cols[:, None] < C) & (ks[None, :] < D),
                other=0.0,
            )
            tl.atomic_add(
                DH + rows[:, None] * D + ks[None, :],
                tl.dot(g_in, _operand(w, UPCAST), input_precision=PRECISION),
                mask=live[:, None] & (ks[None, :] < D),
            )
        if WANT_W:
            h = tl.load(
                H + rows[:, None] * D + ks[None, :],
                mask=live[:, None] & (ks[None, :] < D),
                other=0.0,
            )
            tl.atomic_add(
                DW + cols[:, None] * D + ks[None, :],
                tl.dot(tl.trans(g_in), _operand(h, UPCAST), input_precision=PRECISION),
                mask=(cols[:, None] < C) & (ks[None, :] < D),
            )


def _tiles(hidden: torch.Tensor) -> dict[str, int]:
    """Tile sizes: small under the interpreter (it runs every lane in NumPy), large on a GPU."""
    if not hidden.is_cuda:
        return {"BM": 16, "BN": 16, "BK": 16}
    return {"BM": 128, "BN": 128, "BK": 64, "num_warps": 8, "num_stages": 3}


def _flags(hidden: torch.Tensor, bias: torch.Tensor | None, options: Options) -> dict[str, object]:
    """The compile-time switches both kernels take; float32 products in full precision."""
    return {
        "HAS_BIAS": bias is not None,
        "SOFTCAP": options.softcap is not None,
        "PRECISION": "ieee" if hidden.dtype == torch.float32 else "tf32",
        "UPCAST": not hidden.is_cuda,
    }


def forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    options: Options,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row losses (nats, float32, ``ignore_index`` rows 0, bad labels NaN) and log-sum-exps."""
    rows, dim = hidden.shape
    classes = weight.shape[0]
    tiles = _tiles(hidden)
    row_blocks, class_blocks = triton.cdiv(rows, tiles["BM"]), triton.cdiv(classes, tiles["BN"])
    splits = _splits(hidden, row_blocks, class_blocks)
    per_split = triton.cdiv(class_blocks, splits)
    parts = torch.empty(splits, 4, rows, dtype=torch.float32, device=hidden.device)
    if rows:
        _forward[(row_blocks, splits)](
            hidden, weight, bias, target, parts, rows, classes, dim, per_split,
            options.softcap or 1.0, SMOOTHING=options.label_smoothing > 0,
            **_flags(hidden, bias, options), **tiles,
        )  # fmt: skip
    return row_losses(parts, target, options, classes)


def gradients(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    options: Options,
    lse: torch.Tensor,
    grad_scale: torch.Tensor,
    wants: tuple[bool, ...],
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """∂h, ∂W, ∂b in float32 (those in ``wants``), each row's share times ``grad_scale``."""
    rows, dim = hidden.shape
    classes = weight.shape[0]
    d_h, d_w, d_b = gradient_sums(hidden, weight, bias, wants, torch.float32)
    factor = grad_scale.to(hidden.device, torch.float32).contiguous()
    tiles = _tiles(hidden)
    grid = (triton.cdiv(rows, tiles["BM"]), triton.cdiv(classes, tiles["BN"]))
    if rows and (d_h is not None or d_w is not None or d_b is not None):
        _backward[grid](
            hidden, weight, bias, target, lse, factor, 1 if factor.dim() else 0, d_h, d_w, d_b,
            rows, classes, dim, options.ignore_index, options.label_smoothing, options.z_loss,
            options.softcap or 1.0, SMOOTHING=options.label_smoothing > 0,
            Z_LOSS=options.z_loss > 0, WANT_H=d_h is not None, WANT_W=d_w is not None,
            WANT_B=d_b is not None, **_flags(hidden, bias, options), **tiles,
        )  # fmt: skip
    return d_h, d_w, d_b


def _splits(hidden: torch.Tensor, row_blocks: int, class_blocks: int) -> int:
    """Class splits: enough programs to fill the device (about 4 per multiprocessor)."""
    if not hidden.is_cuda:
        return min(class_blocks, 2)  # the interpreter: still more than one split, to test them
    units = torch.cuda.get_device_properties(hidden.device).multi_processor_count
    return max(1, min(class_blocks, -(-4 * units // row_blocks)))
