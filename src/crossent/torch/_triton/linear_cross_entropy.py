"""Linear + cross entropy in Triton, tile by tile: no logits, not even a chunk of them.

The low-memory mode of :func:`crossent.torch.linear_cross_entropy`. A tile of logits
x = h Wᵀ + b (BM rows × BN classes) is a blockwise matrix product accumulated in float32 and
lives only in registers:

    forward   grid (row blocks, class splits): each program walks its share of the class
              blocks with an online log-sum-exp (arXiv 1805.02867) — running max m and
              Σ exp(x − m) per row — and picks up the target's logit x_y and, for label
              smoothing, Σ_j x_j. The splits' partial sums are combined on the device.
    backward  grid (class blocks, row blocks): the tile of logits is computed again, turned
              into its gradient g = f · (p · (1 + 2 z lse) − (1 − ε) [j = y] − ε / C)
              (times 1 − tanh² under soft-capping), and multiplied out at once:
              ∂h += g W_tile and ∂W_tile += gᵀ h, added atomically in float32 (relaxed
              ordering: the sums need no other memory order); ∂b += Σ_rows g.

So the forward costs 2·N·D·C flops and the gradients 6·N·D·C (8 in all, the logits being
computed twice) and the only memory besides the float32 gradient sums is O(N). Atomic
additions make the gradients' last bits depend on the order the tiles finish in: this mode is
not bit-deterministic (the chunked mode is). Class weights are not supported here.

Element offsets are int64 (N · D and C · D pass 2^31 at Llama-405B's head), and a grid axis
past CUDA's 65,535 blocks (axis 1) is launched in pieces: each kernel takes the index of its
first block on each axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from crossent.torch._class_blocks import gradient_sums, row_losses
from crossent.torch._spec import LossOptions
from crossent.torch._triton.cross_entropy import _capped, _on

GRID_Y = 65_535  # CUDA's most blocks along grid axes 1 and 2


@triton.jit
def _logits_tile(
    H, Wt, B, rows, cols, N, C, D, softcap,
    HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, PRECISION: tl.constexpr,
    UPCAST: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
):  # fmt: skip
    """Logits of ``rows`` × ``cols`` (int64 indices) in float32: Σ_k h[i, k] W[j, k] + b[j],
    soft-capped."""
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


@triton.jit(do_not_specialize=["N", "C", "D"])
def _forward(
    H, Wt, B, Y, PARTS, N, C, D, blocks_per_split, softcap, first_row_block,
    HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, SMOOTHING: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    BK: tl.constexpr,
):  # fmt: skip
    """Per row and class split: running max, Σ exp(x − max), x_y and Σ_j x_j into PARTS."""
    split = tl.program_id(1)
    row_block = (first_row_block + tl.program_id(0)).to(tl.int64)
    rows = row_block * BM + tl.arange(0, BM)
    y = tl.load(Y + rows, mask=rows < N, other=-1)
    m = tl.full((BM,), float("-inf"), tl.float32)
    s = tl.zeros((BM,), tl.float32)
    x_y = tl.zeros((BM,), tl.float32)
    x_sum = tl.zeros((BM,), tl.float32)
    first = split * blocks_per_split
    last = tl.minimum(first + blocks_per_split, tl.cdiv(C, BN))
    for block in range(first, last):
        cols = (block * BN + tl.arange(0, BN)).to(tl.int64)  # block · BN < C + BN: no overflow
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


@triton.jit(do_not_specialize=["N", "C", "D", "ignore_index"])
def _backward(
    H, Wt, B, Y, LSE, F, stride_f, DH, DW, DB, N, C, D, ignore_index, eps, z_loss, softcap,
    first_class_block, first_row_block,
    HAS_BIAS: tl.constexpr, SOFTCAP: tl.constexpr, SMOOTHING: tl.constexpr,
    Z_LOSS: tl.constexpr, WANT_H: tl.constexpr, WANT_W: tl.constexpr, WANT_B: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr,
    BK: tl.constexpr,
):  # fmt: skip
    """One tile's gradient of the logits, multiplied out into ∂h, ∂W and ∂b (atomic adds).
    Grid axis 0: class blocks (up to 2^31 − 1); axis 1: row blocks."""
    class_block = (first_class_block + tl.program_id(0)).to(tl.int64)
    row_block = (first_row_block + tl.program_id(1)).to(tl.int64)
    rows = row_block * BM + tl.arange(0, BM)
    cols = class_block * BN + tl.arange(0, BN)
    x = _logits_tile(
        H, Wt, B, rows, cols, N, C, D, softcap, HAS_BIAS, SOFTCAP, PRECISION, UPCAST, BM, BN, BK
    )
    live = rows < N
    lse = tl.load(LSE + rows, mask=live, other=0.0)
    y = tl.load(Y + rows, mask=live, other=ignore_index)
    ignored = (y == ignore_index) | ~live
    invalid = ~ignored & ((y < 0) | (y >= C))
    factor = tl.load(F + rows * stride_f, mask=live, other=0.0)
    factor = tl.where(invalid, float("nan"), factor)
    coef = 1.0 + 2.0 * z_loss * lse if Z_LOSS else tl.full((BM,), 1.0, tl.float32)
    g = tl.exp(x - lse[:, None]) * coef[:, None]
    g -= tl.where(cols[None, :] == y[:, None], 1.0 - eps, 0.0)
    if SMOOTHING:
        g -= eps / C
    if SOFTCAP:
        t = x / softcap
        g *= 1.0 - t * t
    # ignored rows: exactly 0, also where their logits or lse are not finite (0 · inf is NaN)
    g = tl.where((cols[None, :] < C) & ~ignored[:, None], g * factor[:, None], 0.0)
    if WANT_B:
        tl.atomic_add(DB + cols, tl.sum(g, axis=0), mask=cols < C, sem="relaxed")
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
                sem="relaxed",
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
                sem="relaxed",
            )


@dataclass(frozen=True)
class Tiles:
    """A launch's tile sizes and the switches both kernels share; :func:`tiles` is the one
    place that picks them (tests/test_triton_compile.py compiles every choice)."""

    BM: int
    BN: int
    BK: int
    num_warps: int
    num_stages: int
    PRECISION: str
    UPCAST: bool

    def constants(self) -> dict[str, object]:
        return {"BM": self.BM, "BN": self.BN, "BK": self.BK, "PRECISION": self.PRECISION,
                "UPCAST": self.UPCAST}  # fmt: skip

    def launch(self) -> dict[str, object]:
        return {**self.constants(), "num_warps": self.num_warps, "num_stages": self.num_stages}


def tiles(dtype: torch.dtype, cuda: bool, tf32: bool) -> Tiles:
    """Tile sizes: small under the interpreter (it runs every lane in NumPy); on a GPU the
    largest that spill no register on sm_80 and sm_90a (tests/test_triton_compile.py):
    64 × 128 × 32 on 8 warps for 2-byte inputs; for float32, whose operands take twice the
    registers, 64 × 64 × 32 with TF32 products and 64 × 64 × 16 in full precision (128 × 128 ×
    64 spilled 12 KB a thread in the backward). float32 products use TF32 when PyTorch allows
    it (``torch.backends.cuda.matmul.allow_tf32``), else full precision."""
    precision = "tf32" if dtype != torch.float32 or tf32 else "ieee"
    if not cuda:
        return Tiles(16, 16, 16, 4, 1, precision, True)
    if dtype != torch.float32:
        return Tiles(64, 128, 32, 8, 3, precision, False)
    if precision == "tf32":
        return Tiles(64, 64, 32, 8, 3, precision, False)
    return Tiles(64, 64, 16, 8, 2, precision, False)


def _tiles_for(hidden: torch.Tensor) -> Tiles:
    return tiles(hidden.dtype, hidden.is_cuda, torch.backends.cuda.matmul.allow_tf32)


def forward(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    options: LossOptions,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Row losses (nats, float32, ``ignore_index`` rows 0, bad labels NaN) and log-sum-exps."""
    rows, dim = hidden.shape
    classes = weight.shape[0]
    tile = _tiles_for(hidden)
    row_blocks, class_blocks = triton.cdiv(rows, tile.BM), triton.cdiv(classes, tile.BN)
    splits = _splits(hidden, row_blocks, class_blocks)
    per_split = triton.cdiv(class_blocks, splits)
    parts = torch.empty(splits, 4, rows, dtype=torch.float32, device=hidden.device)
    if rows:
        with _on(hidden.device):
            _forward[(row_blocks, splits)](
                hidden, weight, bias, target, parts, rows, classes, dim, per_split,
                options.softcap or 1.0, 0, HAS_BIAS=bias is not None,
                SOFTCAP=options.softcap is not None, SMOOTHING=options.label_smoothing > 0,
                **tile.launch(),
            )  # fmt: skip
    return row_losses(parts, target, options, classes)


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
    """∂h, ∂W, ∂b in float32 (those in ``wants``), each row's share times ``grad_scale``."""
    rows, dim = hidden.shape
    classes = weight.shape[0]
    d_h, d_w, d_b = gradient_sums(hidden, weight, bias, wants, torch.float32)
    if not rows or (d_h is None and d_w is None and d_b is None):
        return d_h, d_w, d_b
    factor = grad_scale.to(hidden.device, torch.float32).contiguous()
    tile = _tiles_for(hidden)
    class_blocks, row_blocks = triton.cdiv(classes, tile.BN), triton.cdiv(rows, tile.BM)
    with _on(hidden.device):
        for first_row_block, count in _pieces(row_blocks, GRID_Y):
            _backward[(class_blocks, count)](
                hidden, weight, bias, target, lse, factor, 1 if factor.dim() else 0, d_h, d_w,
                d_b, rows, classes, dim, options.ignore_index, options.label_smoothing,
                options.z_loss, options.softcap or 1.0, 0, first_row_block,
                HAS_BIAS=bias is not None, SOFTCAP=options.softcap is not None,
                SMOOTHING=options.label_smoothing > 0, Z_LOSS=options.z_loss > 0,
                WANT_H=d_h is not None, WANT_W=d_w is not None, WANT_B=d_b is not None,
                **tile.launch(),
            )  # fmt: skip
    return d_h, d_w, d_b


def _pieces(blocks: int, most: int) -> list[tuple[int, int]]:
    """``blocks`` as launches of at most ``most``: (first block, count) each."""
    return [(first, min(most, blocks - first)) for first in range(0, blocks, most)]


def _splits(hidden: torch.Tensor, row_blocks: int, class_blocks: int) -> int:
    """Class splits: enough programs to fill the device (about 4 per multiprocessor), at most
    :data:`GRID_Y` (grid axis 1)."""
    if not hidden.is_cuda:
        return min(class_blocks, 2)  # the interpreter: still more than one split, to test them
    units = torch.cuda.get_device_properties(hidden.device).multi_processor_count
    return max(1, min(class_blocks, GRID_Y, -(-4 * units // row_blocks)))
