"""The low-memory Triton kernels of linear_cross_entropy against the chunked pass.

Without a GPU they run in Triton's interpreter (TRITON_INTERPRET=1, set by conftest.py) on
CPU tensors at small shapes; with one, the same tests run on it.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from crossent.torch import linear_cross_entropy
from crossent.torch._spec import LossOptions as Options
from crossent.torch._triton import linear_cross_entropy as tiles

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


@pytest.fixture(autouse=True)
def _tiles_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    """The low-memory mode takes the Triton tiles on CPU tensors too (the interpreter)."""
    from crossent.torch import _dispatch

    monkeypatch.setattr(_dispatch, "head_tiles", lambda hidden: tiles)


def head(rows: int, dim: int, classes: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    tensors = [
        torch.randn(rows, dim, generator=generator),
        torch.randn(classes, dim, generator=generator) / math.sqrt(dim) * 3,
        torch.randn(classes, generator=generator),
    ]
    labels = torch.randint(0, classes, (rows,), generator=generator)
    labels[min(2, rows - 1)] = -100
    hidden, weight, bias = (t.to(DEVICE).requires_grad_() for t in tensors)
    return hidden, weight, bias, labels.to(DEVICE)


def loss_and_grads(tensors, **kwargs):
    hidden, weight, bias, labels = tensors
    loss = linear_cross_entropy(hidden, weight, labels, bias=bias, **kwargs)
    upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    return [loss, *torch.autograd.grad(loss, (hidden, weight, bias), upstream)]


OPTIONS = [
    {},
    {"label_smoothing": 0.15},
    {"z_loss": 1e-2},
    {"softcap": 4.0},
    {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 6.0},
]


@pytest.mark.parametrize(
    ("reduction", "options"), list(itertools.product(["mean", "sum", "none"], OPTIONS))
)
def test_tiles_match_the_chunked_pass(reduction, options) -> None:
    # 37 rows, 50 classes, 20 features: partial tiles on every side, and two class splits
    tensors = head(37, 20, 50, seed=len(options))
    tiled = loss_and_grads(tensors, reduction=reduction, low_memory=True, **options)
    chunked = loss_and_grads(tensors, reduction=reduction, chunk_size=8, **options)
    for a, b in zip(tiled, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)


def test_tiles_without_bias_and_the_log_sum_exp() -> None:
    hidden, weight, _, labels = head(19, 33, 70)
    loss, lse = linear_cross_entropy(
        hidden, weight, labels, reduction="none", low_memory=True, return_lse=True
    )
    logits = F.linear(hidden, weight)
    torch.testing.assert_close(lse, torch.logsumexp(logits, -1).detach(), rtol=1e-5, atol=1e-5)
    expected = F.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_tiles_in_bfloat16() -> None:
    hidden, weight, bias, labels = (
        t.detach().bfloat16().requires_grad_() if t.is_floating_point() else t
        for t in head(24, 32, 40)
    )
    tiled = loss_and_grads((hidden, weight, bias, labels), low_memory=True)
    exact = loss_and_grads(
        [t.detach().double().requires_grad_() for t in (hidden, weight, bias)] + [labels]
    )
    assert tiled[0].dtype == torch.float32
    assert [g.dtype for g in tiled[1:]] == [torch.bfloat16] * 3
    torch.testing.assert_close(tiled[0].double(), exact[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(tiled[1:], exact[1:], strict=True):
        # bfloat16 roundings (of the inputs' products and of g before its products): within
        # 2^-6 of the largest entry (measured: up to 0.005); a zero gradient would be 1 off
        scale = b.abs().max()
        assert (a.double() - b).abs().max() <= 2**-6 * scale


def test_all_rows_ignored_gives_zero_with_zero_gradients() -> None:
    hidden, weight, bias, labels = head(9, 8, 20)
    loss = linear_cross_entropy(
        hidden, weight, torch.full_like(labels, -100), bias=bias, low_memory=True
    )
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.all(t.grad == 0) for t in (hidden, weight, bias))


def test_a_bad_label_in_the_kernel_gives_nan_never_a_number() -> None:
    """The kernels cannot raise; on a GPU a label outside [0, C) makes the loss NaN."""
    hidden, weight, _bias, labels = head(6, 8, 20)
    labels[0] = 25
    options = Options(None, -100, 0.0, 0.0, None)
    loss, lse = tiles.forward(hidden.detach(), weight.detach(), None, labels, options)
    assert math.isnan(loss[0].item())
    assert torch.isfinite(loss[1:]).all()
    assert torch.isfinite(lse).all()
    grads = tiles.gradients(
        hidden.detach(), weight.detach(), None, labels, options, lse,
        torch.tensor(1.0), (True, True, False),
    )  # fmt: skip
    assert torch.isnan(grads[0][0]).all()
    assert torch.isnan(grads[1]).any()


def test_a_transposed_weight_is_read_by_its_values() -> None:
    """A weight that is a view (a tied embedding's transpose, say) gives the same answer."""
    hidden, weight, bias, labels = head(11, 20, 30)
    stored = weight.detach().T.contiguous().requires_grad_()  # (D, C) memory, used as (C, D)
    tiled = loss_and_grads((hidden, stored.T, bias, labels), low_memory=True)
    chunked = loss_and_grads((hidden, weight, bias, labels), chunk_size=4)
    for a, b in zip(tiled, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)


def test_strided_labels_are_read_by_their_values() -> None:
    hidden, weight, bias, labels = head(9, 20, 30)
    strided = torch.stack([labels, torch.zeros_like(labels)], dim=1).reshape(-1)[::2]
    tiled = loss_and_grads((hidden, weight, bias, strided), low_memory=True)
    chunked = loss_and_grads((hidden, weight, bias, labels), chunk_size=4)
    for a, b in zip(tiled, chunked, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("low_memory", [False, True])
def test_a_cuda_graph_replays_the_head(low_memory: bool) -> None:
    hidden, weight, bias, labels = head(48, 64, 300)
    labels = labels.clamp(min=0)

    def step() -> torch.Tensor:
        loss = linear_cross_entropy(hidden, weight, labels, bias=bias, low_memory=low_memory)
        loss.backward()
        return loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(2):
            hidden.grad = weight.grad = bias.grad = None
            step()
    torch.cuda.current_stream().wait_stream(side)
    hidden.grad = weight.grad = bias.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = step()
    fresh = head(48, 64, 300, seed=4)
    with torch.no_grad():
        for mine, new in zip((hidden, weight, bias), fresh[:3], strict=True):
            mine.copy_(new)
    graph.replay()
    again = [t.detach().clone().requires_grad_() for t in fresh[:3]]
    expected = F.cross_entropy(F.linear(again[0], again[1], again[2]), labels)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-4, atol=1e-5)
    for got, want in zip((hidden.grad, weight.grad, bias.grad), again, strict=True):
        torch.testing.assert_close(got, want.grad, rtol=1e-4, atol=1e-5)


# ---- shapes past int32 offsets and CUDA's grid limit ----

_LAST_PROGRAMS = """
import sys, torch
from crossent.torch._triton import linear_cross_entropy as tiles
which, D = sys.argv[1], int(sys.argv[2])
BM = BN = 16
big = 2**31 // D + 2 * BM  # the last block's element offsets (index · D) pass 2^31
N, C = (big, 32) if which == "rows" else (32, big)
generator = torch.Generator().manual_seed(0)
hidden, weight = torch.empty(N, D), torch.empty(C, D)  # never touched but where written below
labels, lse = torch.empty(N, dtype=torch.int64), torch.empty(N)
row_block, class_block = ((N - 1) // BM, 0) if which == "rows" else (0, (C - 1) // BN)
rows = slice(row_block * BM, min(N, row_block * BM + BM))
cols = slice(class_block * BN, min(C, class_block * BN + BN))
hidden[rows] = torch.randn(rows.stop - rows.start, D, generator=generator) / 8
weight[cols] = torch.randn(cols.stop - cols.start, D, generator=generator) / 8
labels[rows] = cols.start + torch.randint(0, cols.stop - cols.start, (rows.stop - rows.start,))
x = hidden[rows].double() @ weight[cols].double().T
lse[rows] = torch.logsumexp(x, 1).float()  # as if these classes were all
d_h, d_w = torch.empty(N, D), torch.empty(C, D)
d_h[rows], d_w[cols] = 0, 0
tiles._backward[(1, 1)](
    hidden, weight, None, labels, lse, torch.ones(()), 0, d_h, d_w, None, N, C, D, -100, 0.0,
    0.0, 1.0, class_block, row_block, HAS_BIAS=False, SOFTCAP=False, SMOOTHING=False,
    Z_LOSS=False, WANT_H=True, WANT_W=True, WANT_B=False,
    **tiles.tiles(torch.float32, False, False).launch(),
)
g = torch.softmax(x, 1)
g[torch.arange(g.shape[0]), labels[rows] - cols.start] -= 1
errors = ((d_h[rows].double() - g @ weight[cols].double()).abs().max().item(),
          (d_w[cols].double() - g.T @ hidden[rows].double()).abs().max().item())
print(max(errors))
"""


@pytest.mark.parametrize(("which", "dim"), [("rows", 1024), ("classes", 2048)])
def test_offsets_past_two_to_the_31_elements(which: str, dim: int) -> None:
    """N · D past 2^31 (N ≥ 524,289 at D = 4,096) or C · D (C = 256,000 at D ≥ 8,389): int32
    offsets read and wrote 8 GiB outside the tensors (here D is smaller, N or C larger). The
    kernel runs its last program only, over buffers of 8.6 GB whose untouched pages are never
    committed; in a subprocess, which a wrong address would crash rather than this run."""
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-c", _LAST_PROGRAMS, which, str(dim)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**__import__("os").environ, "TRITON_INTERPRET": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert float(result.stdout.split()[-1]) < 1e-5


def test_launches_past_cudas_grid_limit_are_split(monkeypatch: pytest.MonkeyPatch) -> None:
    """Grid axis 1 takes at most 65,535 blocks (the backward's row blocks reach it at
    N = 8,388,481 rows); more are launched in pieces, each starting at its first block."""
    assert tiles._pieces(5, 2) == [(0, 2), (2, 2), (4, 1)]
    assert tiles._pieces(65_535, tiles.GRID_Y) == [(0, 65_535)]
    assert tiles._pieces(65_536, tiles.GRID_Y) == [(0, 65_535), (65_535, 1)]
    tensors = head(37, 20, 50, seed=3)
    whole = loss_and_grads(tensors, low_memory=True)
    monkeypatch.setattr(tiles, "GRID_Y", 1)  # one row block per launch
    pieces = loss_and_grads(tensors, low_memory=True)
    for a, b in zip(pieces, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
