"""crossent.torch.cross_entropy against PyTorch, the float64 reference, and the math."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from crossent.torch import CrossEntropyLoss, cross_entropy, cross_entropy_reference

REDUCTIONS = ("none", "sum", "mean")


def problem(shape: tuple[int, ...], dtype: torch.dtype = torch.float64, seed: int = 0):
    """Logits, index targets with one ignored, probability targets, class weights."""
    generator = torch.Generator().manual_seed(seed)
    classes = shape[1] if len(shape) > 1 else shape[0]
    logits = 3 * torch.randn(shape, generator=generator, dtype=torch.float64)
    example = (shape[0], *shape[2:]) if len(shape) > 1 else ()
    index = torch.randint(0, classes, example, generator=generator)
    if index.dim():
        index.view(-1)[min(1, index.numel() - 1)] = -100
    probs = torch.softmax(
        torch.randn(shape, generator=generator, dtype=torch.float64), dim=1 if len(shape) > 1 else 0
    )
    weight = torch.rand(classes, generator=generator, dtype=torch.float64) + 0.1
    return logits.to(dtype), index, probs.to(dtype), weight.to(dtype)


def value_and_grad(fn, logits, target, upstream=None, **options):
    x = logits.detach().clone().requires_grad_(True)
    loss = fn(x, target, **options)
    g = (  # drawn once in float64, then cast: every dtype gets the same upstream gradient
        torch.randn(loss.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        if upstream is None
        else upstream
    ).to(loss.dtype)
    (loss * g).sum().backward()
    return loss.detach(), x.grad


@pytest.mark.parametrize("shape", [(7, 5), (4, 6, 3), (2, 3, 2, 2)], ids=["2d", "3d", "4d"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_equals_pytorch_on_every_combination(shape: tuple[int, ...], dtype: torch.dtype) -> None:
    """index/probability targets × weights × label smoothing × reduction, values and gradients."""
    logits, index, probs, weight = problem(shape, dtype)
    tolerance = (
        {"rtol": 1e-10, "atol": 1e-12} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 2e-6}
    )
    for target, w, eps, reduction in itertools.product(
        (index, probs), (None, weight), (0.0, 0.25), REDUCTIONS
    ):
        options = {"weight": w, "label_smoothing": eps, "reduction": reduction}
        ours = value_and_grad(cross_entropy, logits, target, **options)
        theirs = value_and_grad(F.cross_entropy, logits, target, **options)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, **tolerance, msg=f"{target.dtype} {options}")


@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_z_loss_and_softcap_match_the_reference(z_loss: float, softcap: float | None) -> None:
    logits, index, probs, weight = problem((9, 7, 2))
    for target, w, eps, reduction, base in itertools.product(
        (index, probs), (None, weight), (0.0, 0.1), REDUCTIONS, (math.e, 2.0)
    ):
        options = {
            "weight": w,
            "label_smoothing": eps,
            "reduction": reduction,
            "z_loss": z_loss,
            "softcap": softcap,
            "base": base,
        }
        ours = value_and_grad(cross_entropy, logits, target, **options)
        reference = value_and_grad(cross_entropy_reference, logits, target, **options)
        for a, b in zip(ours, reference, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "options",
    [{}, {"label_smoothing": 0.2, "z_loss": 1e-2}, {"softcap": 2.0}, {"reduction": "none"}],
    ids=["plain", "smoothing+z", "softcap", "none"],
)
def test_gradcheck_float64(options: dict) -> None:
    logits, index, probs, weight = problem((4, 5))
    for target in (index, probs):
        x = logits.clone().requires_grad_(True)
        assert torch.autograd.gradcheck(
            lambda x, t=target: cross_entropy(x, t, weight=weight, **options), (x,)
        )


def test_odd_class_counts() -> None:
    for classes in (1, 3, 423, 32000):  # 1: the loss is 0; 423: not a power of 2
        logits, index, _, _ = problem((3, classes), torch.float32, seed=classes)
        index = index.clamp(min=0)
        ours = value_and_grad(cross_entropy, logits, index)
        theirs = value_and_grad(F.cross_entropy, logits, index)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=2e-5, atol=1e-6)


def test_a_large_vocabulary_row() -> None:
    logits, index, _, _ = problem((2, 128256), torch.float32, seed=5)  # Llama 3's vocabulary
    index = index.clamp(min=0)
    ours = value_and_grad(cross_entropy, logits, index)
    reference = value_and_grad(cross_entropy_reference, logits.double(), index)
    torch.testing.assert_close(ours[0].double(), reference[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ours[1].double(), reference[1], rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("threads", [1, 2])
def test_many_chunks_on_several_threads_give_the_one_chunk_answer(monkeypatch, threads) -> None:
    """The CPU pass splits rows into chunks run on a thread pool; the answer may not change."""
    from crossent.torch import _torch_ops

    logits, index, probs, weight = problem((37, 50), torch.float32, seed=3)
    options = {"weight": weight, "label_smoothing": 0.1, "z_loss": 1e-3, "reduction": "none"}
    whole = [value_and_grad(cross_entropy, logits, t, **options) for t in (index, probs)]
    monkeypatch.setattr(_torch_ops, "CHUNK_ELEMENTS", 3 * 50)  # 13 chunks of 3 rows (the last 1)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        chunked = [value_and_grad(cross_entropy, logits, t, **options) for t in (index, probs)]
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before
    for ours, theirs in zip(chunked, whole, strict=True):
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)


# ---- where PyTorch is wrong, the math ----


def test_ignored_rows_have_zero_loss_and_exactly_zero_gradient_even_with_minus_inf() -> None:
    """pytorch#11551: an ignored row could turn −inf logits into NaN gradients."""
    logits = torch.tensor(
        [[-math.inf, 0.0, 1.0], [2.0, -math.inf, -math.inf], [-math.inf, -math.inf, -math.inf]],
        requires_grad=True,
    )
    target = torch.tensor([-100, 0, -100])  # the last row is all −inf, and ignored
    loss = cross_entropy(logits, target, reduction="none")
    loss.sum().backward()
    assert loss.tolist() == [0.0, 0.0, 0.0]
    assert logits.grad is not None
    assert torch.equal(logits.grad[[0, 2]], torch.zeros(2, 3))
    assert torch.isfinite(logits.grad).all()


def test_probability_target_zero_where_the_logit_is_minus_inf_is_finite() -> None:
    logits = torch.tensor([[-math.inf, 0.0, 1.0]], requires_grad=True)
    target = torch.tensor([[0.0, 0.5, 0.5]])
    loss = cross_entropy(logits, target)
    loss.backward()
    expected = -0.5 * (torch.log_softmax(torch.tensor([0.0, 1.0]), 0)).sum()
    torch.testing.assert_close(loss, expected)
    assert logits.grad is not None
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 0] == 0


def test_mean_over_no_examples_is_zero_with_zero_gradient() -> None:
    """PyTorch returns NaN (0 / 0); a batch with every target ignored contributes nothing."""
    logits = torch.randn(3, 4, requires_grad=True)
    loss = cross_entropy(logits, torch.full((3,), -100))
    loss.backward()
    assert loss.item() == 0.0
    assert logits.grad is not None
    assert torch.equal(logits.grad, torch.zeros(3, 4))
    assert math.isnan(F.cross_entropy(logits, torch.full((3,), -100)).item())


def test_a_label_of_probability_zero_costs_infinity_with_a_finite_gradient() -> None:
    logits = torch.tensor([[-math.inf, 0.0]], requires_grad=True)
    loss = cross_entropy(logits, torch.tensor([0]))
    loss.backward()
    assert loss.item() == math.inf
    assert logits.grad is not None
    assert logits.grad.tolist() == [[-1.0, 1.0]]  # ∂/∂x of −log p_0 = p − onehot, p = (0, 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_is_computed_and_returned_in_float32(dtype: torch.dtype) -> None:
    logits, index, _, _ = problem((64, 1000), torch.float32, seed=3)
    index = index.clamp(min=0)
    low = logits.to(dtype)
    truth = value_and_grad(cross_entropy_reference, low.double(), index, reduction="none")
    ours = value_and_grad(cross_entropy, low, index, reduction="none")
    eager = value_and_grad(F.cross_entropy, low, index, reduction="none")
    assert ours[0].dtype == torch.float32
    assert ours[1].dtype == dtype
    error = (ours[0].double() - truth[0]).abs().max()
    eager_error = (eager[0].double() - truth[0]).abs().max()
    assert error <= eager_error + 1e-6  # no worse than PyTorch's own, at this dtype
    assert error < 1e-5  # accumulated in float32: only the inputs' rounding is left
    grad_error = (ours[1].double() - truth[1]).abs().max()
    assert grad_error <= (eager[1].double() - truth[1]).abs().max()
    assert grad_error <= 2**-7 * truth[1].abs().max()  # one rounding to the dtype, no more


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_low_precision_spatial_logits_get_each_elements_upstream(reduction: str) -> None:
    # (N, C, d) bfloat16 logits: their gradient is made in the backward, where the upstream
    # of reduction="none" is one number per element (N, d), not per row of the (N·d, C) view
    logits, index, _, _ = problem((4, 6, 3), torch.float32, seed=5)
    low = logits.to(torch.bfloat16)
    truth = value_and_grad(cross_entropy_reference, low.double(), index, reduction=reduction)
    ours = value_and_grad(cross_entropy, low, index, reduction=reduction)
    assert ours[1].dtype == torch.bfloat16
    assert (ours[1].double() - truth[1]).abs().max() <= 2**-7 * truth[1].abs().max()


def test_double_backward_of_spatial_logits_with_an_upstream_per_element() -> None:
    # (N, C, d) logits, reduction="none": the backward that is itself differentiated takes
    # one upstream number per element (N, d), as F.cross_entropy does
    logits, index, _, _ = problem((4, 6, 3), torch.float64, seed=6)
    upstream = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    results = []
    for fn in (cross_entropy, F.cross_entropy):
        x = logits.detach().clone().requires_grad_(True)
        loss = fn(x, index.clamp(min=0), reduction="none")
        (grad,) = torch.autograd.grad((loss * upstream).sum(), x, create_graph=True)
        results.append((grad, torch.autograd.grad(grad.pow(2).sum(), x)[0]))
    torch.testing.assert_close(results[0], results[1])


def test_inplace_backward_writes_the_gradient_over_the_logits() -> None:
    logits, index, _, _ = problem((5, 7), torch.float32)
    expected = value_and_grad(cross_entropy, logits, index, reduction="none")
    x = logits.clone().requires_grad_(True)
    buffer = x.detach()
    loss = cross_entropy(x, index, inplace_backward=True, reduction="none")
    g = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1))
    (loss * g).sum().backward()
    torch.testing.assert_close(loss.detach(), expected[0])
    torch.testing.assert_close(x.grad, expected[1])
    assert buffer.data_ptr() == x.grad.data_ptr()  # no second N×C buffer


def test_no_gradient_needed_computes_no_gradient() -> None:
    logits, index, _, _ = problem((5, 7), torch.float32)
    with torch.no_grad():
        loss = cross_entropy(logits, index)
    torch.testing.assert_close(loss, F.cross_entropy(logits, index))


def test_the_module() -> None:
    logits, index, _, weight = problem((6, 4))
    module = CrossEntropyLoss(weight=weight, label_smoothing=0.1)
    expected = torch.nn.CrossEntropyLoss(weight=weight, label_smoothing=0.1)(logits, index)
    torch.testing.assert_close(module(logits, index), expected)


# ---- bad input ----


def test_out_of_range_labels_are_named_with_their_position() -> None:
    logits = torch.randn(4, 3)
    with pytest.raises(
        ValueError,
        match=r"`target` must be class indices in \[0, 3\) or "
        r"ignore_index -100; got 3 at position \(2,\)",
    ):
        cross_entropy(logits, torch.tensor([0, 1, 3, -100]))
    with pytest.raises(ValueError, match=r"got -1 at position \(0,\)"):
        cross_entropy(logits, torch.tensor([-1, 1, 2, 0]))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"label_smoothing": 1.5}, r"`label_smoothing` must be in \[0, 1\]; got 1.5"),
        ({"z_loss": -1.0}, r"`z_loss` must be a finite number ≥ 0; got -1.0"),
        ({"softcap": 0.0}, r"`softcap` must be a finite number > 0 or None; got 0.0"),
        ({"weight": torch.ones(4)}, r"`weight` must have shape \(3,\), one per class; got \(4,\)"),
        ({"reduction": "avg"}, r"`reduction` must be one of"),
        ({"base": 1.0}, r"`base`"),
    ],
)
def test_bad_options_are_named(options: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        cross_entropy(torch.randn(2, 3), torch.tensor([0, 1]), **options)


def test_probability_targets_must_have_the_logits_shape() -> None:
    with pytest.raises(ValueError, match=r"must have the shape of `logits` \(2, 3\); got \(2, 4\)"):
        cross_entropy(torch.randn(2, 3), torch.rand(2, 4))


def test_torch_compile_fullgraph() -> None:
    """The pass is a registered operator, so torch.compile needs no graph break."""
    compiled = torch.compile(cross_entropy, fullgraph=True)
    logits, index, _, weight = problem((6, 5), torch.float32)
    for options in ({}, {"weight": weight, "label_smoothing": 0.1, "reduction": "sum"}):
        ours = value_and_grad(compiled, logits, index, **options)
        theirs = value_and_grad(F.cross_entropy, logits, index, **options)
        for a, b in zip(ours, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)


def test_torch_compile_fullgraph_with_every_option_equals_eager() -> None:
    """The compiled pass and backward operators get every option: another ignore_index,
    z-loss and "none"; probability targets (with their gradient), soft-capping and bits;
    bfloat16 logits, whose gradient the backward operator makes."""
    logits, index, probs, weight = problem((6, 5), torch.float32, seed=3)
    other = torch.where(index == -100, 2, index)  # ignore class 2 instead
    cases = [
        (logits, other, {"ignore_index": 2, "z_loss": 1e-2, "reduction": "none"}),
        (logits, probs, {"softcap": 2.0, "base": 2.0, "weight": weight, "label_smoothing": 0.1}),
        (logits.bfloat16(), index, {"weight": weight, "z_loss": 1e-2}),
    ]
    for x, target, options in cases:
        results = []
        for run in (torch.compile(cross_entropy, fullgraph=True), cross_entropy):
            torch._dynamo.reset()
            tensors = [x.clone().requires_grad_()]
            if target.is_floating_point():
                tensors.append(target.clone().requires_grad_())
            loss = run(tensors[0], tensors[-1] if len(tensors) > 1 else target, **options)
            upstream = torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape)
            results.append([loss.detach(), *torch.autograd.grad(loss, tensors, upstream)])
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a.double(), b.double(), rtol=1e-5, atol=1e-6)


class NewMemory(TorchDispatchMode):
    """Records the largest new storage (in elements) any operator produced: views and
    results written into existing memory do not count."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        flat = [*args, *(kwargs or {}).values()]
        known = {t.untyped_storage().data_ptr() for t in flat if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else [out]:
            if (
                isinstance(tensor, torch.Tensor)
                and tensor.untyped_storage().data_ptr() not in known
            ):
                self.largest = max(self.largest, tensor.numel())
        return out


def test_a_plain_backward_makes_no_tensor_the_size_of_the_logits() -> None:
    """On the CPU the gradient is made in the forward, so ``loss.backward()`` of a mean only
    hands it on: no new N × C tensor (autograd once made one of zeros as the "gradient" of
    the Function's gradient output, 250 ms at 4096 × 32000)."""
    logits, index, _, _ = problem((64, 500), torch.float32)
    x = logits.clone().requires_grad_(True)
    loss = cross_entropy(x, index.clamp(min=0))
    with NewMemory() as backward:
        loss.backward()
    assert backward.largest < 64 * 500


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_mean_over_no_weight_is_zero_with_a_zero_gradient_even_smoothed(dtype) -> None:
    """Every label of class weight 0: the mean divides by Σ w_y = 0, so the loss is 0 and the
    gradient exactly 0, though smoothing gives every row a nonzero term (on the host's path
    for float32, the backward's for bfloat16); and a batch of no rows alike."""
    generator = torch.Generator().manual_seed(2)
    x = torch.randn(4, 3, generator=generator).to(dtype).requires_grad_()
    weight = torch.tensor([0.0, 1.0, 1.0])
    loss = cross_entropy(x, torch.zeros(4, dtype=torch.long), weight=weight, label_smoothing=0.1)
    loss.backward()
    assert loss.item() == 0.0
    assert x.grad is not None
    assert torch.equal(x.grad, torch.zeros_like(x))
    empty = torch.empty(0, 3, dtype=dtype, requires_grad=True)
    loss = cross_entropy(empty, torch.empty(0, dtype=torch.long), label_smoothing=0.1)
    loss.backward()
    assert loss.item() == 0.0
    assert empty.grad is not None
    assert empty.grad.shape == (0, 3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_label_outside_the_classes_with_class_weights_is_named(dtype) -> None:
    """The host's denominator reads the weights of the labels before the pass checks them: a
    label outside the classes still gets the check's message, not an index error; from the
    compiled kernel (float32) and from the check before the torch ops' pass (float64)."""
    with pytest.raises(
        ValueError,
        match=r"^`target` must be class indices in \[0, 3\) or ignore_index -100; got 5 at "
        r"position \(1,\)$",
    ):
        cross_entropy(
            torch.randn(4, 3, dtype=dtype), torch.tensor([0, 5, 0, 0]), weight=torch.ones(3)
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_probability_targets_gradient_with_every_option(dtype) -> None:
    """∂loss/∂t_j = −f (1 − ε) w_j log p_j with the soft-capped logits, made in the backward
    from the logits and their log-sum-exps: against the float64 reference's autograd."""
    generator = torch.Generator().manual_seed(12)
    logits = torch.randn(6, 5, generator=generator, dtype=torch.float64).to(dtype)
    target = torch.softmax(torch.randn(6, 5, generator=generator, dtype=torch.float64), -1)
    weight = torch.rand(5, generator=generator, dtype=torch.float64) + 0.5
    options = {"label_smoothing": 0.1, "softcap": 2.0, "z_loss": 0.01, "reduction": "sum"}
    x, t = logits.clone().requires_grad_(), target.to(dtype).requires_grad_()
    loss = cross_entropy(x, t, weight=weight.to(dtype), **options)
    ours = torch.autograd.grad(loss, (x, t))
    xr, tr = logits.double().requires_grad_(), t.detach().double().requires_grad_()
    reference = cross_entropy_reference(xr, tr, weight=weight.to(dtype).double(), **options)
    expected = torch.autograd.grad(reference, (xr, tr))
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5 if dtype == torch.float32 else 2e-2
    for mine, exact in zip(ours, expected, strict=True):
        assert mine.dtype == dtype
        torch.testing.assert_close(mine.double(), exact, rtol=tolerance, atol=tolerance)


def test_a_base_of_root_e_doubles_the_nats() -> None:
    """1 / ln √e = 2: the unit's product is taken whenever the base is not e."""
    x, y = torch.randn(5, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 0])
    assert cross_entropy(x, y, base=math.sqrt(math.e)).item() == pytest.approx(
        2 * cross_entropy(x, y).item(), rel=1e-15
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_logits_are_left_as_they_were_unless_inplace_backward(dtype) -> None:
    """The gradient goes to new memory (bfloat16's is made in the backward, from the logits),
    and over the logits only with inplace_backward=True."""
    logits = torch.randn(6, 5).to(dtype)
    kept = logits.clone()
    x = logits.requires_grad_()
    cross_entropy(x, torch.tensor([0, 1, 2, 3, 4, 0])).backward()
    assert torch.equal(logits.detach(), kept)
    assert x.grad is not None
    assert x.grad.data_ptr() != x.data_ptr()
    copy = kept.clone().requires_grad_()
    y = copy.clone()
    cross_entropy(y, torch.tensor([0, 1, 2, 3, 4, 0]), inplace_backward=True).backward()
    assert copy.grad is not None
    assert not torch.equal(y.detach(), kept)  # overwritten by its gradient
