"""The Triton kernel against the chunked CPU pass and PyTorch; on the CPU via TRITON_INTERPRET=1.

With a GPU the same tests run on it; without one, Triton's interpreter runs the kernel on
CPU tensors (small shapes: it is slow), which is how CI checks the kernel.
"""

from __future__ import annotations

import importlib
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")  # TRITON_INTERPRET=1 is set by conftest.py without a GPU

from crossent.torch import _torch_ops, cross_entropy
from crossent.torch._spec import LossOptions as Options
from crossent.torch._triton import cross_entropy as kernel

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the interpreter emulates IEEE arithmetic with NumPy, which warns on log(0) and inf − inf
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def rows(count: int, classes: int, dtype: torch.dtype = torch.float32, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(count, classes, generator=generator)
    labels = torch.randint(0, classes, (count,), generator=generator)
    labels[min(1, count - 1)] = -100
    logits[0, 0] = -math.inf
    return logits.to(DEVICE, dtype), labels.to(DEVICE)


@pytest.mark.parametrize("classes", [1, 3, 37, 300, 4099])  # 4099: past one block, odd
def test_kernel_matches_the_chunked_pass_on_every_option(classes: int) -> None:
    logits, labels = rows(5, classes, seed=classes)
    weight = torch.rand(classes, generator=torch.Generator().manual_seed(1)).to(DEVICE) + 0.1
    scale = torch.tensor(0.37, dtype=torch.float64)
    for w, eps, z, cap in itertools.product((None, weight), (0.0, 0.2), (0.0, 1e-2), (None, 2.0)):
        options = Options(w, -100, eps, z, cap)
        expected_grad, grad = torch.empty(logits.shape), torch.empty_like(logits)
        expected = _torch_ops.loss_and_grad(
            logits.cpu(), labels.cpu(), options, scale, expected_grad
        )
        got = kernel.loss_and_grad(logits, labels, options, scale.to(DEVICE), grad)
        message = f"w={w is not None} eps={eps} z={z} softcap={cap}"
        torch.testing.assert_close(
            got.cpu(), expected, rtol=1e-5, atol=1e-5, equal_nan=True, msg=message
        )
        torch.testing.assert_close(
            grad.cpu(), expected_grad.cpu(), rtol=1e-5, atol=1e-6, equal_nan=True, msg=message
        )


@pytest.mark.parametrize("classes", [1, 3, 37, 4099])
def test_probability_kernel_matches_the_chunked_pass_on_every_option(classes: int) -> None:
    logits, _ = rows(5, classes, seed=classes)  # logits[0, 0] is −inf
    generator = torch.Generator().manual_seed(classes)
    target = torch.softmax(torch.randn(5, classes, generator=generator), dim=1)
    if classes > 1:  # a zero target where the logit is −inf: contributes 0, not NaN
        target[0, 0] = 0.0
        target[0] /= target[0].sum()
    else:  # one class: a row of −inf only has no softmax at all
        logits[0, 0] = 0.5
    target = target.to(DEVICE)
    weight = torch.rand(classes, generator=generator).to(DEVICE) + 0.1
    scale = torch.tensor([0.5, 1.0, 2.0, 0.0, 1.5], dtype=torch.float64)  # one per row
    for w, eps, z, cap in itertools.product((None, weight), (0.0, 0.2), (0.0, 1e-2), (None, 2.0)):
        options = Options(w, -100, eps, z, cap)
        expected_grad, grad = torch.empty(logits.shape), torch.empty_like(logits)
        expected_lse, lse = torch.empty(5), torch.empty(5, device=DEVICE)
        expected = _torch_ops.loss_and_grad(
            logits.cpu(), target.cpu(), options, scale, expected_grad, expected_lse
        )
        got = kernel.loss_and_grad(logits, target, options, scale.to(DEVICE), grad, lse)
        message = f"C={classes} w={w is not None} eps={eps} z={z} softcap={cap}"
        for mine, theirs in ((got, expected), (lse, expected_lse), (grad, expected_grad)):
            torch.testing.assert_close(
                mine.cpu(), theirs.cpu(), rtol=1e-5, atol=1e-5, equal_nan=True, msg=message
            )


def test_strided_class_weights_are_read_by_their_values() -> None:
    logits, labels = rows(4, 30, seed=2)
    spread = torch.rand(60, generator=torch.Generator().manual_seed(4)).to(DEVICE) + 0.1
    every_other = spread[::2]  # a view with stride 2
    options = Options(every_other, -100, 0.1, 0.0, None)
    expected = _torch_ops.loss_and_grad(logits.cpu(), labels.cpu(), options, None, None)
    got = kernel.loss_and_grad(logits, labels, options, None, None)
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-5, atol=1e-5, equal_nan=True)


def test_ignored_rows_are_exactly_zero_and_bad_labels_are_nan() -> None:
    logits = torch.tensor([[-math.inf, -math.inf, -math.inf], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    labels = torch.tensor([-100, 3, 1])  # an ignored all −inf row, an out-of-range label
    grad = torch.empty_like(logits)
    options = Options(None, -100, 0.0, 0.0, None)
    loss = kernel.loss_and_grad(logits.to(DEVICE), labels.to(DEVICE), options, None, grad)
    assert loss[0].item() == 0.0
    assert torch.equal(grad[0], torch.zeros(3))
    assert math.isnan(loss[1].item())  # a kernel cannot raise: the number is not a number
    assert torch.isnan(grad[1]).all()
    assert math.isclose(loss[2].item(), math.log(3), rel_tol=1e-6)


def test_a_term_of_weight_zero_is_zero_even_at_minus_inf() -> None:
    """A label of class weight 0 whose logit is −inf, and the smoothing sum over that class:
    0 · ∞ is 0 here, as in the CPU passes, not NaN."""
    logits = torch.tensor([[0.0, -math.inf, 1.0], [2.0, -math.inf, 0.5]])
    labels = torch.tensor([1, 0])
    weight = torch.tensor([1.0, 0.0, 2.0])
    for eps in (0.0, 0.3):
        options = Options(weight.to(DEVICE), -100, eps, 0.0, None)
        grad, expected_grad = torch.empty_like(logits).to(DEVICE), torch.empty_like(logits)
        loss = kernel.loss_and_grad(logits.to(DEVICE), labels.to(DEVICE), options, None, grad)
        expected = _torch_ops.loss_and_grad(
            logits, labels, Options(weight, -100, eps, 0.0, None), None, expected_grad
        )
        assert torch.isfinite(loss).all()
        assert torch.isfinite(grad).all()
        torch.testing.assert_close(loss.cpu(), expected, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad.cpu(), expected_grad, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_public_function_through_the_kernel(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    api = importlib.import_module("crossent.torch._dispatch")
    monkeypatch.setattr(api, "uses_triton", lambda _: True)
    logits, labels = rows(6, 50, dtype)
    x = logits.clone().requires_grad_(True)
    loss = cross_entropy(x, labels, label_smoothing=0.1)
    loss.backward()
    y = logits.float().clone().requires_grad_(True)
    expected = F.cross_entropy(y, labels, label_smoothing=0.1)
    expected.backward()
    assert loss.dtype == torch.float32
    assert x.grad is not None
    assert x.grad.dtype == dtype
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(x.grad.float(), y.grad, rtol=tolerance, atol=tolerance)


def test_strided_labels_through_the_public_function(monkeypatch: pytest.MonkeyPatch) -> None:
    api = importlib.import_module("crossent.torch._dispatch")
    monkeypatch.setattr(api, "uses_triton", lambda _: True)
    logits, labels = rows(5, 40, seed=6)
    spread = torch.stack([labels, torch.zeros_like(labels)], dim=1).reshape(-1)
    strided = spread[::2]  # the labels again, as a view with stride 2
    torch.testing.assert_close(
        cross_entropy(logits, strided, reduction="none"),
        F.cross_entropy(logits, labels, reduction="none"),
    )


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_forward_and_backward_replay_inside_a_cuda_graph(reduction: str) -> None:
    """No host synchronisation anywhere on CUDA: the whole step can be captured and replayed."""
    logits, labels = rows(64, 1000)
    labels = labels.clamp(min=0)
    x = logits.clone().requires_grad_(True)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch.cuda.graphs asks
        for _ in range(2):
            x.grad = None
            cross_entropy(x, labels, label_smoothing=0.1, reduction=reduction).backward()
    torch.cuda.current_stream().wait_stream(side)
    x.grad = None
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = cross_entropy(x, labels, label_smoothing=0.1, reduction=reduction)
        loss.backward()
    fresh, fresh_labels = rows(64, 1000, seed=9)
    with torch.no_grad():
        x.copy_(fresh)
        labels.copy_(fresh_labels.clamp(min=0))
    graph.replay()
    y = fresh.clone().requires_grad_(True)
    expected = F.cross_entropy(y, labels, label_smoothing=0.1, reduction=reduction)
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-6)


def test_probability_targets_through_the_public_function(monkeypatch: pytest.MonkeyPatch) -> None:
    api = importlib.import_module("crossent.torch._dispatch")
    monkeypatch.setattr(api, "uses_triton", lambda _: True)
    used = []
    original = kernel.loss_and_grad
    monkeypatch.setattr(
        kernel, "loss_and_grad", lambda *a, **k: used.append(1) or original(*a, **k)
    )
    logits, _ = rows(6, 50, seed=8)
    logits[0, 0] = 1.0  # finite everywhere: the loss is a number to compare
    target = torch.softmax(torch.randn(6, 50, generator=torch.Generator().manual_seed(2)), 1)
    x = logits.clone().requires_grad_(True)
    loss = cross_entropy(x, target.to(DEVICE), label_smoothing=0.1)
    loss.backward()
    y = logits.clone().requires_grad_(True)
    expected = F.cross_entropy(y, target.to(DEVICE), label_smoothing=0.1)
    expected.backward()
    assert used, "the Triton kernel was not used"
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-6)


# ---- what a GPU would break: layouts, float16 scaling, non-finite ignored rows, devices ----


@pytest.fixture
def through_triton(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The public functions take the Triton kernels whatever the device (the interpreter on
    the CPU); returns a list that grows by one per kernel call."""
    from crossent.torch import _dispatch

    calls: list[int] = []
    original = kernel.loss_and_grad
    monkeypatch.setattr(_dispatch, "uses_triton", lambda tensor: tensor.dtype != torch.float64)
    monkeypatch.setattr(
        kernel, "loss_and_grad", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    return calls


@pytest.mark.parametrize(
    "shape", ["batch of one (1, C, d)", "every other class (C,)", "every other row"]
)
@pytest.mark.parametrize("inplace", [False, True])
def test_logits_whose_classes_are_not_adjacent(through_triton, shape: str, inplace: bool) -> None:
    """Views whose class stride is not 1 reach the kernel as rows of unit stride: (1, C, d)
    logits of a batch of one and x[::2] gave 5.5169 for 3.0877 and 1.2963 for 2.9610."""
    generator = torch.Generator().manual_seed(11)
    if shape.startswith("batch"):
        base = torch.randn(1, 5, 3, generator=generator)
        target = torch.randint(0, 5, (1, 3), generator=generator)
        view = lambda x: x  # noqa: E731
    elif shape.startswith("every other class"):
        base = torch.randn(10, generator=generator)
        target = torch.tensor(2)
        view = lambda x: x[::2]  # noqa: E731
    else:
        base = torch.randn(8, 6, generator=generator)
        target = torch.randint(0, 6, (4,), generator=generator)
        view = lambda x: x[::2]  # noqa: E731
    results = []
    for fn in (cross_entropy, F.cross_entropy):
        x = base.clone().to(DEVICE).requires_grad_()
        options = {"inplace_backward": True} if inplace and fn is cross_entropy else {}
        loss = fn(view(x.clone() if inplace else x), target.to(DEVICE), reduction="sum", **options)
        results.append((loss, *torch.autograd.grad(loss, x)))
    assert through_triton
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def _autocast_gradient(logits: torch.Tensor, target: torch.Tensor, scale: float) -> torch.Tensor:
    """What autocast and a GradScaler give: the loss in float32, its gradient times the scale
    in float32, rounded once to the logits' dtype."""
    x = logits.detach().clone().requires_grad_()
    (F.cross_entropy(x.float(), target) * scale).backward()
    assert x.grad is not None
    return x.grad


@pytest.mark.parametrize("triton", [True, False], ids=["triton", "torch-ops"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_gradscalers_scale_meets_the_gradient_in_float32(request, triton, dtype) -> None:
    """The default GradScaler scale 65,536 is inf in float16: it must meet the gradient in
    float32 (74% NaN entries before), and the mean's 1/N must not flush small entries to 0
    first (at 32,768, 74% of the nonzero entries were 0)."""
    if triton:
        request.getfixturevalue("through_triton")
    generator = torch.Generator().manual_seed(12)
    logits = (4 * torch.randn(512, 300, generator=generator)).to(DEVICE, dtype)
    target = torch.randint(0, 300, (512,), generator=generator).to(DEVICE)
    for scale in (65536.0, 32768.0, 3.0):
        x = logits.clone().requires_grad_()
        (cross_entropy(x, target) * scale).backward()
        expected = _autocast_gradient(logits, target, scale)
        assert x.grad is not None
        assert x.grad.dtype == dtype
        assert torch.isfinite(x.grad).all()
        assert (x.grad != 0).sum() >= 0.999 * (expected != 0).sum()  # nothing flushed to 0
        # one rounding from float32, as autocast's: apart from it by one unit at most
        unit = torch.finfo(dtype)
        torch.testing.assert_close(
            x.grad.float(), expected.float(), rtol=unit.eps, atol=unit.smallest_normal * unit.eps
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_the_linear_heads_gradients_meet_a_gradscalers_scale_in_float32(dtype) -> None:
    """∂h of the chunked head under a GradScaler: finite, and as close to autocast's as
    rounding allows (the chunked head rounds the logits' gradient to the dtype once)."""
    from crossent.torch import linear_cross_entropy

    generator = torch.Generator().manual_seed(13)
    hidden = torch.randn(256, 32, generator=generator).to(DEVICE, dtype)
    weight = (torch.randn(500, 32, generator=generator) / 4).to(DEVICE, dtype)
    target = torch.randint(0, 500, (256,), generator=generator).to(DEVICE)
    h = hidden.clone().requires_grad_()
    (linear_cross_entropy(h, weight, target, chunk_size=64) * 65536.0).backward()
    reference = hidden.clone().requires_grad_()
    logits = F.linear(reference, weight)  # in the dtype, as autocast runs F.linear
    (F.cross_entropy(logits.float(), target) * 65536.0).backward()
    assert h.grad is not None
    assert reference.grad is not None
    assert torch.isfinite(h.grad).all()
    truth = reference.grad.double()
    error = (h.grad.double() - truth).abs().max()
    assert error <= 2 * torch.finfo(dtype).eps * truth.abs().max()


@pytest.mark.parametrize("known_lse", [False, True])
def test_an_ignored_row_with_z_loss_has_a_zero_gradient_whatever_its_logits(known_lse) -> None:
    """z-loss adds 2 z lse to every row's factor; an ignored row's lse may be −inf, +inf or
    NaN, and 0 · that was NaN in the kernel (the CPU passes gave 0, as documented)."""
    inf, nan = math.inf, math.nan
    logits = torch.tensor(
        [[-inf, -inf, -inf], [inf, 0.0, 1.0], [nan, 0.0, 1.0], [0.5, 1.0, 2.0]], device=DEVICE
    )
    labels = torch.tensor([-100, -100, -100, 2], device=DEVICE)
    options = Options(None, -100, 0.1, 1e-2, None)
    grad = torch.full_like(logits, 7.0)
    lse = torch.empty(4, device=DEVICE)
    kernel.loss_and_grad(logits, labels, options, None, None if known_lse else grad, lse)
    if known_lse:
        kernel.loss_and_grad(logits, labels, options, None, grad, known_lse=lse)
    assert torch.equal(grad[:3], torch.zeros(3, 3, device=DEVICE))
    assert torch.isfinite(grad[3]).all()


def test_one_class() -> None:
    """C = 1: every loss is 0 (plus z-loss), every gradient 0; on a GPU Triton once
    specialised C = 1 into a constant and failed to compile."""
    logits = torch.tensor([[0.3], [-2.0], [5.0]], device=DEVICE)
    labels = torch.tensor([0, -100, 0], device=DEVICE)
    grad, lse = torch.empty_like(logits), torch.empty(3, device=DEVICE)
    loss = kernel.loss_and_grad(logits, labels, Options(), None, None, lse)
    kernel.loss_and_grad(logits, labels, Options(), None, grad, known_lse=lse)
    assert torch.equal(loss.cpu(), torch.zeros(3))
    assert torch.equal(grad.cpu(), torch.zeros(3, 1))


def test_float64_stays_in_float64_where_triton_would_compute_float32() -> None:
    """The dispatch rule keeps float64 on CUDA in torch ops (float64 throughout, as the
    operator's fake implementation says to torch.compile)."""
    from types import SimpleNamespace

    from crossent.torch import _dispatch

    for dtype, expected in ((torch.float64, False), (torch.float32, True), (torch.bfloat16, True)):
        tensor = SimpleNamespace(is_cuda=True, dtype=dtype)
        assert _dispatch.uses_triton(tensor) is expected  # type: ignore[arg-type]
    assert _dispatch.uses_triton(torch.zeros(1)) is False  # the CPU


def test_launches_run_on_the_logits_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """Triton launches on the current CUDA device: logits on cuda:1 (device_map="auto") must
    make it current for the launch, then restore the caller's."""
    import contextlib

    entered: list[torch.device] = []

    @contextlib.contextmanager
    def device(where):
        entered.append(torch.device(where))
        yield

    monkeypatch.setattr(torch.cuda, "device", device)
    with kernel._on(torch.device("cuda", 1)):
        pass
    with kernel._on(torch.device("cpu")):
        pass
    assert entered == [torch.device("cuda", 1)]
    seen: list[torch.device] = []
    original = kernel._on
    monkeypatch.setattr(kernel, "_on", lambda where: seen.append(where) or original(where))
    logits, labels = rows(3, 5)
    kernel.loss_and_grad(logits, labels, Options(), None, None)
    assert seen == [logits.device]
