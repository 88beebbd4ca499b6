"""crossent.torch as a PyTorch citizen: double backward, torch.func, whole-graph compile and
export, gradients of probability targets, and F.cross_entropy's own call patterns.

Every comparison is with ``torch.nn.functional.cross_entropy`` (on the logits ``F.linear``
makes, for the linear head), which PyTorch differentiates by autograd.
"""

from __future__ import annotations

import itertools
import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.func import grad, jacrev, vmap

from crossent.torch import (
    CrossEntropyLoss,
    LinearCrossEntropy,
    cross_entropy,
    cross_entropy_reference,
    linear_cross_entropy,
)

REDUCTIONS = ("mean", "sum", "none")


def linear_head(rows: int = 16, dim: int = 5, classes: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Linear(dim, classes), torch.randn(rows, dim), torch.randint(0, classes, (rows,))


def head_loss(loss: str):
    """The loss of ``linear`` on ``x``: crossent's two forms, or PyTorch's."""

    def run(linear: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor, **options) -> torch.Tensor:
        if loss == "linear":
            return linear_cross_entropy(x, linear.weight, y, bias=linear.bias, **options)
        fn = cross_entropy if loss == "crossent" else F.cross_entropy
        return fn(linear(x), y, **options)

    return run


# ---- double backward ----


@pytest.mark.parametrize("loss", ["crossent", "linear"])
def test_a_gradient_penalty_equals_pytorchs(loss: str) -> None:
    """total = loss + 10 ‖∂loss/∂W‖² on nn.Linear(5, 4) over 16 rows: ‖∂total/∂W‖ is 4.318837
    with F.cross_entropy (crossent gave 0.622005 before its backward was differentiable)."""
    norms = []
    for run in (head_loss(loss), head_loss("torch")):
        linear, x, y = linear_head()
        value = run(linear, x, y)
        (weight_grad,) = torch.autograd.grad(value, linear.weight, create_graph=True)
        (value + 10 * weight_grad.pow(2).sum()).backward()
        assert linear.weight.grad is not None
        norms.append(linear.weight.grad.norm().item())
    assert norms[1] == pytest.approx(4.318837, abs=1e-5)
    assert norms[0] == pytest.approx(norms[1], abs=1e-5)


OPTIONS = [
    {},
    {"ignore_index": 1},
    {"label_smoothing": 0.2},
    {"z_loss": 0.05},
    {"softcap": 2.0},
    {"weight": True},
    {"label_smoothing": 0.1, "z_loss": 0.01, "softcap": 3.0, "weight": True, "base": 2.0},
]


def _options(options: dict, classes: int) -> dict:
    if options.get("weight"):
        generator = torch.Generator().manual_seed(5)
        return {**options, "weight": torch.rand(classes, generator=generator, dtype=torch.float64)}
    return options


@pytest.mark.parametrize(
    ("options", "reduction", "probabilities"),
    [
        case
        for case in itertools.product(OPTIONS, REDUCTIONS, [False, True])
        if not (case[2] and "ignore_index" in case[0])  # probability targets take none ≥ 0
    ],
)
def test_gradgradcheck_in_float64(options: dict, reduction: str, probabilities: bool) -> None:
    """Second derivatives by finite differences of the first, for every option."""
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(5, 4, dtype=torch.float64, generator=generator, requires_grad=True)
    if probabilities:
        target = torch.softmax(torch.randn(5, 4, dtype=torch.float64, generator=generator), -1)
        target.requires_grad_()
        inputs: tuple[torch.Tensor, ...] = (logits, target)
    else:
        target = torch.tensor([0, 1, 2, 1, 3])
        inputs = (logits,)
    chosen = {**_options(options, 4), "reduction": reduction}

    def loss(x: torch.Tensor, *t: torch.Tensor) -> torch.Tensor:
        return cross_entropy(x, t[0] if t else target, **chosen)

    assert torch.autograd.gradgradcheck(loss, inputs)


@pytest.mark.parametrize(
    ("options", "reduction", "probabilities"),
    [
        case
        for case in itertools.product(OPTIONS, REDUCTIONS, [False, True])
        if not (case[2] and "ignore_index" in case[0])
    ],
)
def test_gradgrad_first_and_second_derivatives_are_the_references(
    options: dict, reduction: str, probabilities: bool
) -> None:
    """With create_graph=True the gradient is made by differentiable torch ops; gradgradcheck
    checks only that they agree with themselves, so here the gradient they make (of the
    logits, and of probability targets) and a Hessian-vector product through it are checked
    against the float64 reference's, whose double backward is autograd's own."""
    generator = torch.Generator().manual_seed(6)
    logits = torch.randn(5, 4, dtype=torch.float64, generator=generator)
    logits[3, 2] = -math.inf if not probabilities else logits[3, 2]  # 0 · (−inf) = 0 terms
    if probabilities:
        target = torch.softmax(torch.randn(5, 4, dtype=torch.float64, generator=generator), -1)
    else:
        target = torch.tensor([0, 1, 2, 1, 3])
    chosen = {**_options(options, 4), "reduction": reduction}
    upstream = torch.rand(5 if reduction == "none" else (), generator=generator).double() + 0.5
    vector = torch.randn(5, 4, dtype=torch.float64, generator=generator).nan_to_num()
    results = []
    for loss_fn in (cross_entropy, cross_entropy_reference):
        x = logits.clone().requires_grad_()
        t = target.clone().requires_grad_() if probabilities else target
        wanted = (x, t) if probabilities else (x,)
        loss = loss_fn(x, t, **chosen)
        firsts = torch.autograd.grad(loss, wanted, upstream, create_graph=True)
        product = sum((g.nan_to_num() * vector).sum() for g in firsts)
        seconds = torch.autograd.grad(product, wanted, allow_unused=True)
        results.append([*firsts, *(g for g in seconds if g is not None)])
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12, equal_nan=False)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradgrad_of_the_linear_head_is_the_unfused_heads(reduction: str) -> None:
    """The head's double backward (its logits made, then the rule above) with a bias, class
    weights, smoothing and soft-capping, against autograd through the unfused float64 head."""
    generator = torch.Generator().manual_seed(7)
    tensors = [
        torch.randn(6, 3, dtype=torch.float64, generator=generator),
        torch.randn(5, 3, dtype=torch.float64, generator=generator),
        torch.randn(5, dtype=torch.float64, generator=generator),
    ]
    target = torch.tensor([0, 4, -100, 2, 1, 3])
    options = {"reduction": reduction, "softcap": 4.0, "label_smoothing": 0.1, "z_loss": 0.01}
    weight = torch.rand(5, generator=generator, dtype=torch.float64) + 0.5
    upstream = torch.rand(6 if reduction == "none" else (), generator=generator).double() + 0.5
    results = []
    for fused in (True, False):
        h, w, b = (t.clone().requires_grad_() for t in tensors)
        if fused:
            loss = linear_cross_entropy(h, w, target, bias=b, class_weight=weight, **options)
        else:
            loss = cross_entropy_reference(F.linear(h, w, b), target, weight=weight, **options)
        firsts = torch.autograd.grad(loss, (h, w, b), upstream, create_graph=True)
        product = sum((g * g.detach().sin()).sum() for g in firsts)
        results.append([*firsts, *torch.autograd.grad(product, (h, w, b))])
    for ours, theirs in zip(*results, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("softcap", [None, 4.0])
def test_gradgradcheck_of_the_linear_head(reduction: str, softcap: float | None) -> None:
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(6, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(5, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(5, dtype=torch.float64, generator=generator, requires_grad=True)
    target = torch.tensor([0, 4, -100, 2, 1, 3])

    def loss(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return linear_cross_entropy(
            h, w, target, bias=b, reduction=reduction, softcap=softcap, z_loss=0.01
        )

    assert torch.autograd.gradgradcheck(loss, (hidden, weight, bias))


def test_a_hessian_vector_product_equals_pytorchs() -> None:
    torch.manual_seed(3)
    x = torch.randn(6, 7, requires_grad=True)
    y = torch.randint(0, 7, (6,))
    vector = torch.randn(6, 7)
    products = []
    for fn in (cross_entropy, F.cross_entropy):
        (g,) = torch.autograd.grad(fn(x, y, label_smoothing=0.1), x, create_graph=True)
        products.append(torch.autograd.grad((g * vector).sum(), x)[0])
    torch.testing.assert_close(products[0], products[1], rtol=1e-5, atol=1e-7)


def test_double_backward_after_inplace_backward_is_a_clear_error() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    loss = cross_entropy(x.clone(), torch.tensor([0, 1, 2]), inplace_backward=True)
    message = (
        "crossent.torch.cross_entropy: double backward (create_graph=True, or a torch.func "
        "transform) needs the logits, which inplace_backward=True overwrote; pass "
        "inplace_backward=False"
    )
    with pytest.raises(RuntimeError, match=f"^{re.escape(message)}$"):
        torch.autograd.grad(loss, x, create_graph=True)


def test_vmap_over_logits_alone_single_examples_and_a_batch_of_one() -> None:
    """in_dims (0, None): one target shared by every slice; slices that are one example of
    C logits each; and a batch of one slice."""
    generator = torch.Generator().manual_seed(9)
    x = torch.randn(3, 4, 6, generator=generator)
    y = torch.randint(0, 6, (4,), generator=generator)
    options = {"label_smoothing": 0.1, "weight": torch.rand(6, generator=generator) + 0.5}
    shared = vmap(lambda a: cross_entropy(a, y, **options))(x)
    torch.testing.assert_close(shared, torch.stack([cross_entropy(s, y, **options) for s in x]))
    rows, labels = x[:, 0], torch.tensor([1, 5, 0])
    single = vmap(lambda a, b: cross_entropy(a, b, **options))(rows, labels)
    loop = torch.stack([cross_entropy(r, t, **options) for r, t in zip(rows, labels, strict=True)])
    torch.testing.assert_close(single, loop)
    one = vmap(lambda a: cross_entropy(a, y, reduction="none"))(x[:1])
    torch.testing.assert_close(one, cross_entropy(x[0], y, reduction="none")[None])
    nothing = torch.empty(2, 0, 6), torch.empty(2, 0, dtype=torch.long)  # slices of no rows
    for reduction in ("mean", "sum"):
        empty = vmap(lambda a, b, r=reduction: cross_entropy(a, b, reduction=r))(*nothing)
        assert torch.equal(empty, torch.zeros(2))


# ---- torch.func ----


@pytest.mark.parametrize("loss", ["crossent", "linear"])
def test_per_example_gradients_by_vmap_of_grad(loss: str) -> None:
    """Opacus-style per-sample gradients of the weight: vmap(grad(loss of one example))."""
    linear, x, y = linear_head(rows=8)
    params = {name: p.detach() for name, p in linear.named_parameters()}

    def one(params, run, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        if run == "linear":
            return linear_cross_entropy(xi[None], params["weight"], yi[None], bias=params["bias"])
        logits = torch.func.functional_call(linear, params, (xi[None],))
        return (cross_entropy if run == "crossent" else F.cross_entropy)(logits, yi[None])

    ours = vmap(grad(one), in_dims=(None, None, 0, 0))(params, loss, x, y)
    theirs = vmap(grad(one), in_dims=(None, None, 0, 0))(params, "torch", x, y)
    for name in params:
        assert ours[name].shape == (8, *params[name].shape)
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("probabilities", [False, True])
def test_vmap_over_a_batch_equals_the_loop(reduction: str, probabilities: bool) -> None:
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 6, generator=generator)
    if probabilities:
        y = torch.softmax(torch.randn(2, 4, 6, generator=generator), -1)
    else:
        y = torch.randint(0, 6, (2, 4), generator=generator)
        y[0, 1] = y[1, :] = -100  # the second slice is all ignored: its mean is 0
    weight = torch.rand(6, generator=generator) + 0.5
    options = {"reduction": reduction, "weight": weight, "label_smoothing": 0.1}
    batched = vmap(lambda a, b: cross_entropy(a, b, **options))(x, y)
    loop = torch.stack([cross_entropy(x[i], y[i], **options) for i in range(2)])
    torch.testing.assert_close(batched, loop, rtol=0, atol=1e-6)


def test_vmap_of_the_linear_head_equals_the_loop() -> None:
    generator = torch.Generator().manual_seed(5)
    hidden = torch.randn(2, 4, 3, generator=generator)
    weight = torch.randn(6, 3, generator=generator)
    y = torch.randint(0, 6, (2, 4), generator=generator)
    for reduction in REDUCTIONS:
        batched = vmap(lambda h, t, r=reduction: linear_cross_entropy(h, weight, t, reduction=r))(
            hidden, y
        )
        loop = torch.stack(
            [linear_cross_entropy(hidden[i], weight, y[i], reduction=reduction) for i in range(2)]
        )
        torch.testing.assert_close(batched, loop, rtol=0, atol=1e-6)


def test_grad_of_the_head_with_leading_dims_probability_targets_and_lse() -> None:
    """torch.func.grad through the head (its logits made, then cross_entropy's rule): hidden
    (2, 3, D), probability targets (2, 3, C), soft-capping, and the log-sum-exps of the capped
    logits, against autograd through the unfused head."""
    generator = torch.Generator().manual_seed(4)
    hidden = torch.randn(2, 3, 5, generator=generator, dtype=torch.float64)
    weight = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    bias = torch.randn(7, generator=generator, dtype=torch.float64)
    target = torch.softmax(torch.randn(2, 3, 7, generator=generator, dtype=torch.float64), -1)
    options = {"label_smoothing": 0.1, "softcap": 3.0, "reduction": "sum"}

    def ours(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loss, lse = linear_cross_entropy(h, weight, target, bias=bias, return_lse=True, **options)
        return loss, lse

    gradient, lse = grad(ours, has_aux=True)(hidden)
    h = hidden.clone().requires_grad_()
    logits = F.linear(h, weight, bias)
    loss = cross_entropy(logits.movedim(-1, 1), target.movedim(-1, 1), **options)  # type: ignore[arg-type]
    (expected,) = torch.autograd.grad(loss, h)
    torch.testing.assert_close(gradient, expected, rtol=1e-12, atol=1e-12)
    capped = 3.0 * torch.tanh(logits.detach() / 3.0)
    torch.testing.assert_close(lse, torch.logsumexp(capped, dim=-1), rtol=1e-12, atol=1e-12)
    deeper = torch.randn(2, 3, 4, 5, generator=generator, dtype=torch.float64)  # index labels
    labels = torch.randint(0, 7, (2, 3, 4), generator=generator)
    gradient = grad(lambda h: linear_cross_entropy(h, weight, labels, bias=bias))(deeper)
    h = deeper.clone().requires_grad_()
    loss = cross_entropy(F.linear(h, weight, bias).movedim(-1, 1), labels)
    torch.testing.assert_close(gradient, torch.autograd.grad(loss, h)[0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "options",
    [
        {"reduction": "mean", "probabilities": True},
        {"reduction": "mean", "weight": [0.3, 1.7, 0.9, 1.1, 0.7]},
        {"reduction": "sum", "base": 2.0},
    ],
    ids=["probabilities", "class weights", "sum in bits"],
)
def test_grad_transform_keeps_float64_exact(options: dict) -> None:
    """Under torch.func.grad the gradient is made by differentiable torch ops from the
    reduction's factor (1 / the mean's denominator, 1 / ln base): in float64 every factor
    stays float64 (float32 class weights are read as float64), so the gradient equals the
    float64 reference's to 1e-13."""
    generator = torch.Generator().manual_seed(8)
    logits = torch.randn(7, 5, generator=generator, dtype=torch.float64)
    options = dict(options)
    if options.pop("probabilities", False):
        target = torch.softmax(torch.randn(7, 5, generator=generator, dtype=torch.float64), -1)
    else:
        target = torch.randint(0, 5, (7,), generator=generator)
        target[2] = -100
    reference = dict(options)
    if "weight" in options:  # float32 weights: their float64 values are the reference's
        options["weight"] = torch.tensor(options["weight"], dtype=torch.float32)
        reference["weight"] = options["weight"].double()
    ours = grad(lambda x: cross_entropy(x, target, **options))(logits)
    x = logits.clone().requires_grad_()
    (expected,) = torch.autograd.grad(cross_entropy_reference(x, target, **reference), x)
    torch.testing.assert_close(ours, expected, rtol=1e-13, atol=1e-15)


def test_vmap_over_class_weights_equals_the_loop() -> None:
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    weights = torch.rand(3, 5) + 0.1
    batched = vmap(lambda w: cross_entropy(x, y, w))(weights)
    loop = torch.stack([cross_entropy(x, y, w) for w in weights])
    torch.testing.assert_close(batched, loop)


@pytest.mark.parametrize("loss", ["crossent", "linear"])
def test_jacrev_of_per_example_losses(loss: str) -> None:
    linear, x, y = linear_head(rows=5)
    run = head_loss(loss)
    ours = jacrev(lambda h: run(linear, h, y, reduction="none"))(x)
    theirs = jacrev(lambda h: head_loss("torch")(linear, h, y, reduction="none"))(x)
    assert ours.shape == (5, 5, 5)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)


def test_grad_of_a_probability_target() -> None:
    x = torch.randn(3, 4)
    t = torch.softmax(torch.randn(3, 4), -1)
    ours = grad(lambda t: cross_entropy(x, t, label_smoothing=0.2))(t)
    theirs = grad(lambda t: F.cross_entropy(x, t, label_smoothing=0.2))(t)
    torch.testing.assert_close(ours, theirs)


# ---- gradients of probability targets ----


@pytest.mark.parametrize(
    ("reduction", "weighted", "smoothing", "only_target"),
    list(itertools.product(REDUCTIONS, [False, True], [0.0, 0.3], [False, True])),
)
def test_probability_targets_get_pytorchs_gradient(reduction, weighted, smoothing, only_target):
    generator = torch.Generator().manual_seed(6)
    logits = torch.randn(5, 7, generator=generator)
    target = torch.softmax(torch.randn(5, 7, generator=generator), -1)
    weight = torch.rand(7, generator=generator) + 0.2 if weighted else None
    upstream = torch.rand(5 if reduction == "none" else (), generator=generator)
    results = []
    for fn in (cross_entropy, F.cross_entropy):
        x = logits.clone().requires_grad_(not only_target)
        t = target.clone().requires_grad_()
        loss = fn(x, t, weight, reduction=reduction, label_smoothing=smoothing)
        (loss * upstream).sum().backward()
        results.append((loss, t.grad, x.grad))
    for ours, theirs in zip(*results, strict=True):
        if theirs is None:
            assert ours is None
        else:
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_the_linear_head_gives_a_probability_target_its_gradient(reduction: str) -> None:
    generator = torch.Generator().manual_seed(7)
    hidden = torch.randn(6, 3, generator=generator, requires_grad=True)
    weight = torch.randn(5, 3, generator=generator, requires_grad=True)
    target = torch.softmax(torch.randn(6, 5, generator=generator), -1)
    grads = []
    for fused in (True, False):
        t = target.clone().requires_grad_()
        if fused:
            loss = linear_cross_entropy(
                hidden, weight, t, reduction=reduction, label_smoothing=0.1, chunk_size=4
            )
        else:
            loss = F.cross_entropy(hidden @ weight.T, t, reduction=reduction, label_smoothing=0.1)
        grads.append(torch.autograd.grad(loss.sum(), (t, hidden, weight)))
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_ignore_index_with_probability_targets_is_refused_as_pytorch_does() -> None:
    x, t = torch.randn(3, 4), torch.softmax(torch.randn(3, 4), -1)
    with pytest.raises(RuntimeError, match="ignore_index is not supported"):
        F.cross_entropy(x, t, ignore_index=0)
    with pytest.raises(ValueError, match=r"`ignore_index` is not supported with probability"):
        cross_entropy(x, t, ignore_index=0)
    with pytest.raises(ValueError, match=r"`ignore_index` is not supported with probability"):
        linear_cross_entropy(torch.randn(3, 2), torch.randn(4, 2), t, ignore_index=2)
    torch.testing.assert_close(cross_entropy(x, t, ignore_index=-1), F.cross_entropy(x, t))


def test_inplace_backward_with_a_target_that_wants_a_gradient_is_refused() -> None:
    t = torch.softmax(torch.randn(3, 4), -1).requires_grad_()
    with pytest.raises(ValueError, match="inplace_backward"):
        cross_entropy(torch.randn(3, 4, requires_grad=True), t, inplace_backward=True)


# ---- F.cross_entropy's call patterns ----


def test_the_call_patterns_of_f_cross_entropy() -> None:
    generator = torch.Generator().manual_seed(8)
    x = torch.randn(6, 5, generator=generator)
    y = torch.tensor([0, 1, 2, 3, 4, 1])
    w = torch.rand(5, generator=generator) + 0.1
    calls = [
        ((x, y, w), {}),
        ((x, y, w, None, 1), {}),
        ((x, y, w, None, -100, None, "sum"), {}),
        ((x, y, None, None, -100, None, "none", 0.1), {}),
        ((), {"input": x, "target": y}),
        ((x,), {"target": y, "weight": w, "reduction": "sum"}),
    ]
    for args, kwargs in calls:
        torch.testing.assert_close(cross_entropy(*args, **kwargs), F.cross_entropy(*args, **kwargs))
    module = CrossEntropyLoss(w, None, 2, None, "sum", 0.05)
    expected = torch.nn.CrossEntropyLoss(w, None, 2, None, "sum", 0.05)(x, y)
    torch.testing.assert_close(module(x, y), expected)


@pytest.mark.parametrize(
    ("size_average", "reduce"), list(itertools.product([None, True, False], [None, True, False]))
)
def test_deprecated_size_average_and_reduce_behave_as_in_pytorch(size_average, reduce) -> None:
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    with warnings.catch_warnings(record=True) as ours_warned:
        warnings.simplefilter("always")
        ours = cross_entropy(x, y, size_average=size_average, reduce=reduce)
    with warnings.catch_warnings(record=True) as theirs_warned:
        warnings.simplefilter("always")
        theirs = F.cross_entropy(x, y, size_average=size_average, reduce=reduce)
    torch.testing.assert_close(ours, theirs)
    assert len(ours_warned) == len(theirs_warned)
    assert [str(w.message) for w in ours_warned] == [str(w.message) for w in theirs_warned]


def test_extra_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        cross_entropy(
            torch.randn(2, 3), torch.tensor([0, 1]), None, None, -100, None, "mean", 0.0, 0.1
        )  # type: ignore[misc]


def test_a_misspelt_option_fails_at_construction() -> None:
    with pytest.raises(TypeError, match="label_smothing"):
        LinearCrossEntropy(4, 3, label_smothing=0.1)
    with pytest.raises(ValueError, match=r"`z_loss` must be a finite number ≥ 0"):
        LinearCrossEntropy(4, 3, z_loss=-1.0)
    with pytest.raises(ValueError, match=r"`reduction` must be one of"):
        CrossEntropyLoss(reduction="avg")  # type: ignore[arg-type]


# ---- torch.compile and torch.export ----


class HeadModel(torch.nn.Module):
    """A body and a fused head: what a language model's training step compiles."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Linear(8, 8)
        self.head = LinearCrossEntropy(8, 11, z_loss=1e-3)

    def forward(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(x)), target)


def _explain(fn, *args):
    torch._dynamo.reset()
    return torch._dynamo.explain(fn)(*args)


def test_no_graph_break_in_either_loss_or_a_model_with_the_head() -> None:
    x, y = torch.randn(16, 8), torch.randint(0, 11, (16,))
    weight = torch.randn(11, 8, requires_grad=True)
    y[3] = -100
    for explained in (
        _explain(lambda h: linear_cross_entropy(h, weight, y, label_smoothing=0.1), x),
        _explain(lambda z: cross_entropy(z, y, label_smoothing=0.1), x @ weight.T),
        _explain(HeadModel(), x, y),
    ):
        assert explained.graph_break_count == 0, explained.break_reasons
        assert explained.graph_count == 1


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_fullgraph_forward_and_backward_equal_eager(reduction: str) -> None:
    torch._dynamo.reset()
    model = HeadModel()
    compiled = torch.compile(model, fullgraph=True)
    x, y = torch.randn(12, 8), torch.randint(0, 11, (12,))
    y[0] = -100
    results = []
    for run in (compiled, model):
        model.zero_grad()
        model.head.options = model.head.options.__class__(z_loss=1e-3, reduction=reduction)
        loss = run(x, y)
        loss.sum().backward()
        results.append([loss.detach(), *(p.grad.clone() for p in model.parameters())])
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fullgraph_head_with_every_option_equals_eager() -> None:
    """The compiled head's one operator gets every option: a bias, class weights, smoothing,
    soft-capping, z-loss, another ignore_index, chunks of 5 rows, a float64 weight gradient
    sum; probability targets, whose gradient it makes too; and the low-memory mode, whose
    backward reuses the forward's log-sum-exps."""
    generator = torch.Generator().manual_seed(11)
    hidden = torch.randn(13, 6, generator=generator)
    weight, bias = torch.randn(9, 6, generator=generator), torch.randn(9, generator=generator)
    labels = torch.randint(0, 9, (13,), generator=generator)
    labels[[2, 7]] = 3
    probabilities = torch.softmax(torch.randn(13, 9, generator=generator), -1)
    options = dict(
        class_weight=torch.rand(9, generator=generator) + 0.5, label_smoothing=0.1, softcap=4.0,
        z_loss=1e-2, chunk_size=5, weight_grad_dtype=torch.float64,
    )  # fmt: skip
    low_memory = {**options, "class_weight": None, "low_memory": True}
    for target, reduction, ignore, chosen in (
        (labels, "mean", 3, options),
        (probabilities, "none", -100, options),
        (labels, "sum", 3, low_memory),
    ):
        results = []
        for run in (torch.compile(linear_cross_entropy, fullgraph=True), linear_cross_entropy):
            torch._dynamo.reset()
            tensors = [t.clone().requires_grad_() for t in (hidden, weight, bias)]
            tensors.append(target.clone().requires_grad_(target.is_floating_point()))
            h, w, b, t = tensors
            loss = run(h, w, t, bias=b, reduction=reduction, ignore_index=ignore, **chosen)
            wanted = [x for x in tensors if x.requires_grad]
            upstream = torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape)
            results.append([loss.detach(), *torch.autograd.grad(loss, wanted, upstream)])
        for a, b in zip(*results, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_torch_export_of_a_model_with_the_head() -> None:
    model = HeadModel()
    x, y = torch.randn(12, 8), torch.randint(0, 11, (12,))
    exported = torch.export.export(model, (x, y))
    torch.testing.assert_close(exported.module()(x, y), model(x, y))


def test_the_measures_compile_whole_without_validation() -> None:
    """``validate=True`` reads the data to name a bad value (graph breaks); ``validate=False``
    is one graph (docs/api.md, "PyTorch compatibility")."""
    import crossent

    p, z = torch.softmax(torch.randn(4, 5), -1), torch.randn(4, 5)
    explained = _explain(
        lambda: crossent.kl_divergence(target_probs=p, pred_logits=z, validate=False)
    )
    assert explained.graph_break_count == 0
    assert (
        _explain(lambda: crossent.kl_divergence(target_probs=p, pred_logits=z)).graph_break_count
        > 0
    )


def test_torchscript_scripting_fails_and_tracing_runs_python(tmp_path) -> None:
    """TorchScript (deprecated): ``torch.jit.script`` cannot compile the Python options and
    Function; ``torch.jit.trace`` records the loss as a Python call, which runs (with the
    right gradient) but cannot be saved. docs/api.md points to torch.compile and export."""
    module = CrossEntropyLoss()
    with pytest.raises(Exception, match=r"(?i)source|script"):
        torch.jit.script(module)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(module, (x, y))
    z = torch.randn(4, 3, requires_grad=True)
    traced(z, y).backward()
    expected = torch.autograd.grad(F.cross_entropy(z, y), z)[0]
    assert z.grad is not None
    torch.testing.assert_close(z.grad, expected)
    with pytest.raises(RuntimeError, match="Could not export Python function"):
        traced.save(str(tmp_path / "loss.pt"))
