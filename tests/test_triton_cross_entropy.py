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
        expected_grad, grad = torch.empty_like(logits), torch.empty_like(logits)
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
        expected_grad, grad = torch.empty_like(logits), torch.empty_like(logits)
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
