"""crossent.torch.linear_cross_entropy against the unfused head: F.linear, then the loss.

The oracle is crossent.torch.cross_entropy (itself checked against PyTorch and a float64
reference) on the logits F.linear makes, in float64 so that only the chunking can differ;
torch's own F.linear_cross_entropy is a second, independent check where torch has it.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st
from torch.utils._python_dispatch import TorchDispatchMode

from crossent.torch import (
    LinearCrossEntropy,
    _class_blocks,
    _head_pass,
    cross_entropy,
    linear_cross_entropy,
)
from crossent.torch._head_pass import CHUNK_BYTES
from crossent.torch._spec import LossOptions


def head(
    rows: int = 23, dim: int = 12, classes: int = 17, dtype: torch.dtype = torch.float64, seed=0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden rows, a weight and a bias that want gradients, and labels with ignored rows."""
    generator = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, dim, generator=generator, dtype=dtype).requires_grad_()
    weight = torch.randn(classes, dim, generator=generator, dtype=dtype).requires_grad_()
    bias = torch.randn(classes, generator=generator, dtype=dtype).requires_grad_()
    labels = torch.randint(0, classes, (rows,), generator=generator)
    labels[[min(1, rows - 1), min(4, rows - 1)]] = -100
    return hidden, weight, bias, labels


def value_and_grads(loss_of, tensors, upstream_seed: int = 7):
    """The loss and its gradients for a random upstream gradient (so "none" is checked too)."""
    loss = loss_of()
    upstream = torch.randn(loss.shape, generator=torch.Generator().manual_seed(upstream_seed))
    grads = torch.autograd.grad(loss, tensors, upstream.to(loss.dtype))
    return loss, grads


def assert_close_all(ours, theirs, **tolerance) -> None:
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, **tolerance)


def assert_same_in_float64(ours, theirs) -> None:
    """(loss, gradients) pairs that may differ only by float64 rounding."""
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-12, atol=1e-12)
    assert_close_all(ours[1], theirs[1], rtol=1e-10, atol=1e-12)


OPTIONS = [
    {},
    {"label_smoothing": 0.2},
    {"z_loss": 1e-2},
    {"softcap": 3.0},
    {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 5.0},
]


@pytest.mark.parametrize(
    ("reduction", "options", "use_bias", "weighted", "probabilities"),
    list(
        itertools.product(
            ["mean", "sum", "none"], OPTIONS, [True, False], [False, True], [False, True]
        )
    ),
)
def test_equals_the_unfused_head_on_every_combination(
    reduction, options, use_bias, weighted, probabilities
) -> None:
    hidden, weight, bias, labels = head()
    classes = weight.shape[0]
    class_weight = torch.rand(classes, dtype=torch.float64) + 0.5 if weighted else None
    target = (
        torch.softmax(torch.randn(len(labels), classes, dtype=torch.float64), -1)
        if probabilities
        else labels
    )
    b = bias if use_bias else None
    kwargs = dict(reduction=reduction, **options)
    tensors = (hidden, weight, bias) if use_bias else (hidden, weight)
    ours = value_and_grads(
        lambda: linear_cross_entropy(
            hidden, weight, target, bias=b, class_weight=class_weight, chunk_size=5, **kwargs
        ),
        tensors,
    )
    theirs = value_and_grads(
        lambda: cross_entropy(F.linear(hidden, weight, b), target, weight=class_weight, **kwargs),
        tensors,
    )
    assert_same_in_float64(ours, theirs)


@pytest.mark.skipif(
    not hasattr(F, "linear_cross_entropy"), reason="torch has no F.linear_cross_entropy"
)
@pytest.mark.parametrize(
    ("reduction", "label_smoothing", "weighted"),
    list(itertools.product(["mean", "sum", "none"], [0.0, 0.3], [False, True])),
)
def test_equals_torchs_own_linear_cross_entropy(reduction, label_smoothing, weighted) -> None:
    hidden, weight, bias, labels = head(dtype=torch.float32)
    class_weight = torch.rand(weight.shape[0]) + 0.5 if weighted else None
    kwargs = dict(reduction=reduction, label_smoothing=label_smoothing)
    ours = value_and_grads(
        lambda: linear_cross_entropy(
            hidden, weight, labels, bias=bias, class_weight=class_weight, chunk_size=8, **kwargs
        ),
        (hidden, weight, bias),
    )
    theirs = value_and_grads(
        lambda: F.linear_cross_entropy(
            hidden, weight, labels, linear_bias=bias, weight=class_weight, **kwargs
        ),
        (hidden, weight, bias),
    )
    torch.testing.assert_close(ours[0], theirs[0], rtol=1e-5, atol=1e-5)
    assert_close_all(ours[1], theirs[1], rtol=1e-4, atol=1e-5)


@given(
    rows=st.integers(1, 40),
    dim=st.integers(1, 9),
    classes=st.integers(1, 30),
    chunk=st.integers(1, 50),
    seed=st.integers(0, 2**31),
)
def test_any_shape_and_chunk_size_gives_the_unfused_answer(rows, dim, classes, chunk, seed):
    hidden, weight, bias, _ = head(rows, dim, classes, seed=seed)
    labels = torch.randint(0, classes, (rows,), generator=torch.Generator().manual_seed(seed))
    tensors = (hidden, weight, bias)
    ours = value_and_grads(
        lambda: linear_cross_entropy(hidden, weight, labels, bias=bias, chunk_size=chunk), tensors
    )
    theirs = value_and_grads(
        lambda: F.cross_entropy(F.linear(hidden, weight, bias), labels), tensors
    )
    assert_same_in_float64(ours, theirs)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradcheck_in_float64(reduction) -> None:
    hidden, weight, bias, labels = head(7, 4, 6)
    assert torch.autograd.gradcheck(
        lambda h, w, b: linear_cross_entropy(
            h, w, labels, bias=b, reduction=reduction, chunk_size=3, label_smoothing=0.1,
            z_loss=1e-2, softcap=4.0,
        ),
        (hidden, weight, bias),
    )  # fmt: skip


def test_leading_dimensions_and_the_log_sum_exp() -> None:
    hidden, weight, bias, labels = head(24, 5, 9)
    batch = hidden.detach().reshape(4, 6, 5)
    loss, lse = linear_cross_entropy(
        batch, weight, labels.reshape(4, 6), bias=bias, reduction="none", softcap=2.0,
        return_lse=True, chunk_size=5,
    )  # fmt: skip
    logits = 2.0 * torch.tanh(F.linear(batch, weight, bias) / 2.0)
    torch.testing.assert_close(lse, torch.logsumexp(logits, -1).detach())
    assert loss.shape == lse.shape == (4, 6)
    assert not lse.requires_grad
    expected = F.cross_entropy(logits.reshape(24, 9), labels, reduction="none").reshape(4, 6)
    torch.testing.assert_close(loss, expected)


def test_ignored_rows_contribute_exactly_nothing() -> None:
    """pytorch#11551: an ignored example's gradient is exactly 0, whatever its logits."""
    hidden, weight, bias, labels = head()
    with torch.no_grad():
        hidden[1] = 1e30  # logits of ±inf for this ignored row
    loss = linear_cross_entropy(hidden, weight, labels, bias=bias, chunk_size=4)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(hidden.grad[1] == 0)
    assert torch.isfinite(weight.grad).all()


def test_all_rows_ignored_gives_zero_with_zero_gradients() -> None:
    hidden, weight, bias, labels = head()
    loss = linear_cross_entropy(hidden, weight, torch.full_like(labels, -100), bias=bias)
    loss.backward()
    assert loss.item() == 0.0
    assert all(torch.all(t.grad == 0) for t in (hidden, weight, bias))


def test_bfloat16_loss_is_float32_and_no_worse_than_eager() -> None:
    hidden, weight, bias, labels = head(256, 64, 300, seed=3)
    exact_loss, exact_grads = value_and_grads(
        lambda: F.cross_entropy(F.linear(hidden, weight, bias), labels), (hidden, weight)
    )
    low = [t.detach().bfloat16().requires_grad_() for t in (hidden, weight, bias)]
    ours, our_grads = value_and_grads(
        lambda: linear_cross_entropy(low[0], low[1], labels, bias=low[2], chunk_size=16),
        low[:2],
    )
    eager, eager_grads = value_and_grads(
        lambda: F.cross_entropy(F.linear(low[0], low[1], low[2]), labels), low[:2]
    )
    assert ours.dtype == torch.float32
    assert our_grads[1].dtype == torch.bfloat16
    assert abs(ours.double() - exact_loss) <= abs(eager.double() - exact_loss) + 1e-3
    for mine, theirs, exact in zip(our_grads, eager_grads, exact_grads, strict=True):
        my_error = (mine.double() - exact).norm() / exact.norm()
        assert my_error <= (theirs.double() - exact).norm() / exact.norm() + 2e-3


def test_bfloat16_gradients_kept_for_a_second_backward() -> None:
    """Gradients made in the forward are multiplied by the upstream into new tensors on the
    CPU: a second backward (retain_graph) scales the saved ones again, not already-scaled
    ones, so it adds exactly what the first added."""
    hidden, weight, _bias, labels = head(64, 16, 40, seed=6)
    low = [t.detach().bfloat16().requires_grad_() for t in (hidden, weight)]
    loss = linear_cross_entropy(low[0], low[1], labels, reduction="sum")
    loss.backward(torch.tensor(3.0), retain_graph=True)
    first = [t.grad.clone() for t in low]
    loss.backward(torch.tensor(3.0))
    for once, tensor in zip(first, low, strict=True):
        assert once.abs().max() > 0
        torch.testing.assert_close(tensor.grad, 2 * once)


def test_weight_gradient_summed_in_float32_beats_summing_in_bfloat16(monkeypatch) -> None:
    """Many chunks of bfloat16 gradient summed in bfloat16 lose precision (the divergence in
    docs/prior-art.md §2); the float32 default does not. The float32 sum of ∂W is taken 32
    classes at a time here (a budget of 2 KiB), and ∂b is summed in float32 too: within 2^-8
    of the exact gradient of the same bfloat16 numbers."""
    monkeypatch.setitem(CHUNK_BYTES, "cpu", 2048)  # 8 rows of 64 bfloat16 logits still fit
    hidden, weight, bias, labels = head(2048, 32, 64, seed=5)
    hidden, weight, bias = (t.detach().bfloat16() for t in (hidden, weight, bias))
    exact_w, exact_b = (t.double().requires_grad_() for t in (weight, bias))  # computed exactly
    loss = F.cross_entropy(F.linear(hidden.double(), exact_w, exact_b), labels)
    exact = torch.autograd.grad(loss, (exact_w, exact_b))
    errors = {}
    for dtype in (torch.float32, None):
        w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
        loss = linear_cross_entropy(
            hidden, w, labels, bias=b, chunk_size=2, weight_grad_dtype=dtype
        )
        grads = torch.autograd.grad(loss, (w, b))
        errors[dtype] = [
            ((g.double() - e).norm() / e.norm()).item() for g, e in zip(grads, exact, strict=True)
        ]
    assert errors[torch.float32][0] < errors[None][0] / 4, errors  # measured: 0.0029 vs 0.018
    assert max(errors[torch.float32]) < 2**-8, errors


def test_runs_are_bit_identical() -> None:
    results = []
    for _ in range(2):
        hidden, weight, bias, labels = head(300, 16, 50, dtype=torch.float32)
        loss = linear_cross_entropy(hidden, weight, labels, bias=bias, chunk_size=64)
        loss.backward()
        results.append([loss, hidden.grad, weight.grad, bias.grad])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))


class LargestTensor(TorchDispatchMode):
    """Records the largest number of elements any operator produced."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, tuple | list) else [out]:
            if isinstance(tensor, torch.Tensor):
                self.largest = max(self.largest, tensor.numel())
        return out


def test_no_tensor_as_large_as_the_logits_is_ever_made() -> None:
    rows, dim, classes, chunk = 512, 16, 4000, 32
    hidden, weight, bias, labels = head(rows, dim, classes, dtype=torch.float32)
    with LargestTensor() as ours:
        linear_cross_entropy(hidden, weight, labels, bias=bias, chunk_size=chunk).backward()
    with LargestTensor() as unfused:
        F.cross_entropy(F.linear(hidden, weight, bias), labels).backward()
    assert unfused.largest == rows * classes
    assert ours.largest == chunk * classes  # the one chunk of logits, whose gradient it becomes


def test_reduction_none_backward_and_a_second_backward() -> None:
    hidden, weight, bias, labels = head()
    loss = linear_cross_entropy(hidden, weight, labels, bias=bias, chunk_size=6)
    loss.backward(retain_graph=True)
    first = weight.grad.clone()
    loss.backward()  # on the CPU the saved gradients are kept for retain_graph
    torch.testing.assert_close(weight.grad, 2 * first)


def test_the_unit_follows_base() -> None:
    hidden, weight, bias, labels = head()
    nats = linear_cross_entropy(hidden, weight, labels, bias=bias)
    bits = linear_cross_entropy(hidden, weight, labels, bias=bias, base=2)
    torch.testing.assert_close(bits, nats / math.log(2))


def test_the_module_is_a_head_and_trains() -> None:
    torch.manual_seed(0)
    hidden = torch.randn(200, 8)
    labels = (hidden[:, 0] > 0).long() + 2 * (hidden[:, 1] > 0).long()
    model = LinearCrossEntropy(8, 4, chunk_size=50)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for _ in range(30):
        optimiser.zero_grad()
        loss = model(hidden, labels)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    expected = F.cross_entropy(model.logits(hidden), labels)
    torch.testing.assert_close(model(hidden, labels), expected)
    assert repr(model) == "LinearCrossEntropy(in_features=8, classes=4, bias=True, chunk_size=50)"
    linear = torch.nn.Linear(8, 4)
    shared = LinearCrossEntropy.from_linear(linear, label_smoothing=0.1)
    assert shared.weight is linear.weight
    assert next(iter(shared.parameters())) is linear.weight
    torch.testing.assert_close(
        shared(hidden, labels), F.cross_entropy(linear(hidden), labels, label_smoothing=0.1)
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"target": torch.tensor([0, 1, 17, 2])},
            r"^`target` must be class indices in \[0, 17\) or ignore_index -100; got 17 at "
            r"position \(2,\)$",
        ),
        (
            {"weight": torch.randn(12)},
            r"^`weight` must be \(C, D\) with D = hidden.shape\[-1\]; got weight \(12,\) for "
            r"hidden \(4, 12\)$",
        ),
        (
            {"target": torch.rand(4, 16)},
            r"^probability `target` must have shape \(4, 17\) for hidden \(4, 12\); got \(4, 16\)$",
        ),
        ({"weight": torch.randn(17, 5)}, r"`weight` must be \(C, D\) with D = hidden.shape"),
        ({"weight": torch.randn(17, 12).double()}, r"dtype of `hidden`"),
        ({"bias": torch.randn(16)}, r"`bias` must have shape \(17,\)"),
        ({"target": torch.tensor([0, 1])}, r"index `target` must have shape \(4,\)"),
        ({"chunk_size": 0}, r"^`chunk_size` must be a whole number ≥ 1 or None; got 0$"),
        ({"chunk_size": 2.5}, r"^`chunk_size` must be a whole number ≥ 1 or None; got 2.5$"),
        ({"chunk_size": True}, r"^`chunk_size` must be a whole number ≥ 1 or None; got True$"),
        ({"low_memory": "yes"}, r"^`low_memory` must be True, False or None; got 'yes'$"),
        (
            {"weight_grad_dtype": torch.int64},
            r"^`weight_grad_dtype` must be a floating-point torch.dtype or None; got torch.int64$",
        ),
        (
            {"weight_grad_dtype": "float32"},
            r"^`weight_grad_dtype` must be a floating-point torch.dtype or None; got 'float32'$",
        ),
        ({"label_smoothing": 1.5}, r"`label_smoothing` must be in \[0, 1\]"),
        ({"class_weight": torch.ones(3)}, r"`weight` must have shape \(17,\)"),
    ],
)
def test_bad_input_is_a_clear_error(change, message) -> None:
    arguments = {
        "hidden": torch.randn(4, 12),
        "weight": torch.randn(17, 12),
        "target": torch.tensor([0, 1, 2, 3]),
    }
    arguments |= change
    with pytest.raises((ValueError, TypeError), match=message):
        linear_cross_entropy(**arguments)


def test_low_memory_needs_index_targets_without_class_weights() -> None:
    hidden, weight, _, labels = head(dtype=torch.float32)
    rule = "^`low_memory=True` takes class-index targets without `class_weight`, on one process; "
    with pytest.raises(ValueError, match=rule + "got a class_weight$"):
        linear_cross_entropy(hidden, weight, labels, class_weight=torch.ones(17), low_memory=True)
    probabilities = torch.softmax(hidden @ weight.T, -1)
    with pytest.raises(ValueError, match=rule + "got probability targets and a class_weight$"):
        linear_cross_entropy(
            hidden, weight, probabilities, class_weight=torch.ones(17), low_memory=True
        )


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_one_row_of_hidden_is_one_example(reduction) -> None:
    """hidden (D,) with a 0-d label or a (C,) probability target: the loss of one example."""
    hidden, weight, bias, _ = head()
    row = hidden[3].detach().requires_grad_()
    probabilities = torch.softmax(torch.arange(17.0, dtype=torch.float64), 0)
    for target in (torch.tensor(5), probabilities):
        tensors = (row, weight, bias)
        ours = value_and_grads(
            lambda t=target: linear_cross_entropy(row, weight, t, bias=bias, reduction=reduction),
            tensors,
        )
        theirs = value_and_grads(
            lambda t=target: cross_entropy(F.linear(row, weight, bias), t, reduction=reduction),
            tensors,
        )
        assert ours[0].shape == ()
        assert_same_in_float64(ours, theirs)


def test_a_bias_of_another_dtype_is_added_in_hiddens() -> None:
    """A float64 bias on a float32 head is used in float32; its gradient comes back float64."""
    hidden, weight, bias, labels = head(dtype=torch.float32)
    wide = bias.detach().double().requires_grad_()
    ours = value_and_grads(
        lambda: linear_cross_entropy(hidden, weight, labels, bias=wide), (hidden, weight, wide)
    )
    theirs = value_and_grads(
        lambda: cross_entropy(F.linear(hidden, weight, bias), labels), (hidden, weight, bias)
    )
    assert ours[1][2].dtype == torch.float64
    torch.testing.assert_close(ours[0], theirs[0])
    assert_close_all(ours[1], [g.to(o.dtype) for g, o in zip(theirs[1], ours[1], strict=True)])


@pytest.mark.parametrize("low_memory", [False, True])
@pytest.mark.parametrize("trained", ["hidden", "weight", "bias"])
def test_one_tensor_alone_wanting_its_gradient_gets_it(trained: str, low_memory: bool) -> None:
    """A linear probe (only the weight and bias trained, features fixed), a frozen head (only
    hidden), only the bias: each gets the unfused head's gradient."""
    hidden, weight, bias, labels = head()
    tensors = {"hidden": hidden, "weight": weight, "bias": bias}
    for name, tensor in tensors.items():
        tensor.requires_grad_(name == trained)
    wanted = (tensors[trained],)
    ours = value_and_grads(
        lambda: linear_cross_entropy(hidden, weight, labels, bias=bias, low_memory=low_memory),
        wanted,
    )
    theirs = value_and_grads(lambda: cross_entropy(F.linear(hidden, weight, bias), labels), wanted)
    assert_same_in_float64(ours, theirs)
    if trained != "bias":  # and without a bias at all
        ours = value_and_grads(
            lambda: linear_cross_entropy(hidden, weight, labels, low_memory=low_memory), wanted
        )
        theirs = value_and_grads(lambda: cross_entropy(F.linear(hidden, weight), labels), wanted)
        assert_same_in_float64(ours, theirs)


def test_float16_weight_gradient_partial_sums_beyond_its_range() -> None:
    """∂W summed over chunks reaches -70,000 (beyond float16's 65,504) before the rows that
    bring it back to 0: summed in float32 even when asked to sum in the weight's dtype."""
    hidden = torch.full((1400, 1), 200.0, dtype=torch.float16)
    weight = torch.zeros(2, 1, dtype=torch.float16, requires_grad=True)
    labels = torch.tensor([0] * 700 + [1] * 700)  # p = (1/2, 1/2): each row adds ∓100 to ∂W
    loss = linear_cross_entropy(
        hidden, weight, labels, reduction="sum", chunk_size=100, weight_grad_dtype=None
    )
    loss.backward()
    assert weight.grad is not None
    assert weight.grad.dtype == torch.float16
    assert torch.equal(weight.grad, torch.zeros(2, 1, dtype=torch.float16))


@pytest.mark.parametrize("low_memory", [False, True])
def test_a_head_without_bias(low_memory: bool) -> None:
    hidden, weight, _, labels = head()
    tensors = (hidden, weight)
    ours = value_and_grads(
        lambda: linear_cross_entropy(hidden, weight, labels, low_memory=low_memory), tensors
    )
    theirs = value_and_grads(lambda: cross_entropy(F.linear(hidden, weight), labels), tensors)
    assert_same_in_float64(ours, theirs)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize(
    "options",
    [{}, {"label_smoothing": 0.2, "class_weight": "weights"}, {"softcap": 2.0, "z_loss": 1e-2}],
)
def test_probability_targets_get_the_unfused_heads_gradient(reduction, options) -> None:
    """∂loss/∂t_j = −f (1 − ε) w_j log p_j, chunk by chunk (chunks of 5 rows), the class
    weights and the soft-capped logits included; against autograd through the unfused head."""
    hidden, weight, bias, _ = head()
    generator = torch.Generator().manual_seed(3)
    target = torch.softmax(torch.randn(23, 17, generator=generator, dtype=torch.float64), -1)
    target.requires_grad_()
    weights = torch.rand(17, generator=generator, dtype=torch.float64) + 0.5
    kwargs = {k: weights if v == "weights" else v for k, v in options.items()}
    tensors = (hidden, weight, bias, target)
    ours = value_and_grads(
        lambda: linear_cross_entropy(
            hidden, weight, target, bias=bias, chunk_size=5, reduction=reduction, **kwargs
        ),
        tensors,
    )
    kwargs["weight"] = kwargs.pop("class_weight", None)
    theirs = value_and_grads(
        lambda: cross_entropy(
            F.linear(hidden, weight, bias), target, reduction=reduction, **kwargs
        ),
        tensors,
    )
    assert_same_in_float64(ours, theirs)
    assert ours[1][3].abs().max() > 0.01


def test_the_chunk_rows_fit_the_budget_in_multiples_of_32(monkeypatch) -> None:
    """44 MiB of float32 logits of 32,000 classes is 360 rows, taken as 352 (11 × 32); under 32
    rows, as many as fit, and never under 8. A device other than the CPU has its own budget,
    and wider logits than 8 rows' worth of the budget switch to the low-memory mode."""
    rows = _head_pass.default_chunk_rows
    floats, doubles = torch.empty(0), torch.empty(0, dtype=torch.float64)
    assert rows(32000, floats) == 352
    assert rows(32000, doubles) == 160  # 180 rows of float64
    assert rows(500_000, floats) == 23
    assert rows(2_000_000, floats) == 8
    assert rows(0, floats) == (44 << 20) - (44 << 20) % 32
    meta = torch.empty(0, device="meta")
    assert _head_pass.budget(meta) == _head_pass.CHUNK_BYTES_ELSEWHERE == 256 << 20
    assert rows(32000, meta) == 2080  # 2097 rows
    monkeypatch.setitem(_head_pass.CHUNK_BYTES, "cpu", 8 * 100 * 4)
    options = LossOptions.of(None, -100, 0.0, 0.0, None, "mean", math.e)
    labels, weights = torch.zeros(3, dtype=torch.int64), torch.empty(100, 5)
    assert not _head_pass.tiles_needed(floats, weights, labels, options)  # exactly 8 rows fit
    assert _head_pass.tiles_needed(floats, torch.empty(101, 5), labels, options)
    assert not _head_pass.tiles_needed(floats, torch.empty(101, 5), torch.ones(3, 101), options)
    weighted = LossOptions.of(torch.ones(101), -100, 0.0, 0.0, None, "mean", math.e)
    assert not _head_pass.tiles_needed(floats, torch.empty(101, 5), labels, weighted)
    assert not _head_pass.tiles_needed(doubles, torch.empty(50, 200), labels, options)


# ---- the low-memory mode in plain PyTorch: blocks of classes ----


@pytest.fixture
def class_blocks(monkeypatch):
    """The PyTorch low-memory path, with tiny blocks of classes."""
    monkeypatch.setattr(_class_blocks, "BLOCK_BYTES", 5 * 8 * 4)  # 5 rows × 4 classes, float64
    monkeypatch.setattr(_class_blocks, "ROWS", 5)


@pytest.mark.parametrize(
    ("reduction", "options"), list(itertools.product(["mean", "sum", "none"], OPTIONS))
)
def test_class_blocks_equal_the_unfused_head(class_blocks, reduction, options) -> None:
    hidden, weight, bias, labels = head()
    kwargs = dict(reduction=reduction, **options)
    tensors = (hidden, weight, bias)
    ours = value_and_grads(
        lambda: linear_cross_entropy(hidden, weight, labels, bias=bias, low_memory=True, **kwargs),
        tensors,
    )
    theirs = value_and_grads(
        lambda: cross_entropy(F.linear(hidden, weight, bias), labels, **kwargs), tensors
    )
    assert_same_in_float64(ours, theirs)


def test_class_blocks_ignore_rows_exactly_even_with_huge_logits(class_blocks) -> None:
    hidden, weight, bias, labels = head()
    with torch.no_grad():
        hidden[1] = 1e300  # logits of about ±1e300 for this ignored row
    loss = linear_cross_entropy(hidden, weight, labels, bias=bias, low_memory=True)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(hidden.grad[1] == 0)
    assert torch.isfinite(weight.grad).all()


def test_huge_class_counts_switch_to_blocks_of_classes(monkeypatch) -> None:
    """When even 8 rows of logits exceed the budget, the loss takes blocks of classes by
    itself: no tensor near the size of the logits, the same answer."""
    rows, dim, classes = 512, 2, 4000
    monkeypatch.setitem(CHUNK_BYTES, "cpu", 8 * classes * 4 - 1)  # 8 rows do not fit
    monkeypatch.setattr(_class_blocks, "BLOCK_BYTES", 64 << 10)
    hidden, weight, bias, labels = head(rows, dim, classes, dtype=torch.float32)
    with LargestTensor() as blocks:
        ours = value_and_grads(
            lambda: linear_cross_entropy(hidden, weight, labels, bias=bias), (hidden, weight)
        )
    # blocks of 16,384 logits at most, where chunks of 8 rows would hold 32,000
    assert blocks.largest == (64 << 10) // 4
    theirs = value_and_grads(
        lambda: F.cross_entropy(F.linear(hidden, weight, bias), labels), (hidden, weight)
    )
    torch.testing.assert_close(ours[0], theirs[0])
    assert_close_all(ours[1], theirs[1], rtol=1e-4, atol=1e-6)


def test_class_blocks_of_rows_far_below_zero_or_all_minus_inf(class_blocks) -> None:
    """Logits near −1000 (a row's max far below 0: exp(max) underflows, so the sum must be
    taken relative to the max, not to 0), and a first block of classes all −inf (its max adds
    nothing, not NaN): the unfused head's answer."""
    hidden, weight, bias, labels = head()
    labels[labels < 4] = 7  # no label in the −inf classes
    for shift in (
        torch.full((17,), -1000.0),
        torch.cat([torch.full((4,), -math.inf), torch.zeros(13)]),
    ):
        shifted = (bias + shift).detach().requires_grad_()
        tensors = (hidden, weight, shifted)
        ours = value_and_grads(
            lambda b=shifted: linear_cross_entropy(hidden, weight, labels, bias=b, low_memory=True),
            tensors,
        )
        theirs = value_and_grads(
            lambda b=shifted: cross_entropy(F.linear(hidden, weight, b), labels), tensors
        )
        assert torch.isfinite(ours[0])
        assert_same_in_float64(ours, theirs)


def test_class_blocks_compute_bfloat16_in_float32(class_blocks) -> None:
    """bfloat16 rows in 80 chunks: the logits and the gradients' sums in float32, rounded to
    bfloat16 once; within 2^-8 of the exact gradient of the same bfloat16 numbers (summing
    the chunks in bfloat16 is several times further off)."""
    hidden, weight, bias, labels = head(400, 8, 12, seed=9)
    low = [t.detach().bfloat16().requires_grad_() for t in (hidden, weight, bias)]
    exact = [t.detach().double().requires_grad_() for t in low]
    ours, our_grads = value_and_grads(
        lambda: linear_cross_entropy(low[0], low[1], labels, bias=low[2], low_memory=True), low
    )
    loss, grads = value_and_grads(lambda: F.cross_entropy(F.linear(*exact), labels), exact)
    assert ours.dtype == torch.float32
    assert abs(ours.double() - loss) <= 1e-5 * abs(loss)
    for mine, truth in zip(our_grads, grads, strict=True):
        assert mine.dtype == torch.bfloat16
        assert (mine.double() - truth).norm() <= 2**-8 * truth.norm()


def test_class_blocks_row_losses_combine_splits_by_hand() -> None:
    """Two splits of one row's classes: running maxes 1 and 3, sums of exp(x − max) 2 and 1,
    so lse = log(2e + e³); the target's logit 0.5 in the first split. A label outside the
    classes gives NaN, an ignored row 0."""
    options = LossOptions.of(None, -100, 0.0, 0.0, None, "mean", math.e)
    one = [[1.0, 2.0, 0.5, 0.0], [3.0, 1.0, 0.0, 0.0]]  # per split: max, sum, x_y, Σx
    parts = torch.tensor([[[v] * 5 for v in split] for split in one], dtype=torch.float64)
    losses, lse = _class_blocks.row_losses(parts, torch.tensor([2, -1, 5, -100, 0]), options, 5)
    expected = math.log(2 * math.e + math.e**3)
    torch.testing.assert_close(lse, torch.full((5,), expected, dtype=torch.float64))
    assert losses[0].item() == pytest.approx(expected - 0.5, rel=1e-15)
    assert losses[1].isnan()
    assert losses[2].isnan()
    assert losses[3].item() == 0.0
    assert losses[4].item() == pytest.approx(expected - 0.5)


@given(
    rows=st.integers(1, 30),
    dim=st.integers(1, 7),
    classes=st.integers(1, 25),
    block_rows=st.integers(1, 12),
    block_classes=st.integers(1, 12),
    seed=st.integers(0, 2**31),
)
def test_any_blocks_of_classes_give_the_unfused_answer(
    rows, dim, classes, block_rows, block_classes, seed
):
    hidden, weight, bias, _ = head(rows, dim, classes, seed=seed)
    labels = torch.randint(0, classes, (rows,), generator=torch.Generator().manual_seed(seed))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_class_blocks, "ROWS", block_rows)
        patch.setattr(_class_blocks, "BLOCK_BYTES", block_rows * block_classes * 8)
        ours = value_and_grads(
            lambda: linear_cross_entropy(
                hidden, weight, labels, bias=bias, low_memory=True, label_smoothing=0.1
            ),
            (hidden, weight, bias),
        )
    theirs = value_and_grads(
        lambda: F.cross_entropy(F.linear(hidden, weight, bias), labels, label_smoothing=0.1),
        (hidden, weight, bias),
    )
    assert_same_in_float64(ours, theirs)


@pytest.mark.parametrize("reduction", ["mean", "none"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_heads_with_leading_dimensions_are_no_worse_than_eager(reduction, dtype) -> None:
    """float16 (and "none") take the gradient in the backward, where the upstream gradient
    of each (b, t) example meets its row: against the exact loss and gradients of the same
    numbers, no further off than eager PyTorch at that dtype (relative norms)."""
    hidden, weight, bias, labels = head(24, 8, 11, seed=2)
    low = [t.detach().to(dtype).requires_grad_() for t in (hidden, weight, bias)]
    exact = [t.detach().double().requires_grad_() for t in low]
    labels = labels.reshape(4, 6)

    def unfused(h, w, b):
        return F.cross_entropy(
            F.linear(h.reshape(4, 6, 8), w, b).movedim(-1, 1), labels, reduction=reduction
        )

    ours = value_and_grads(
        lambda: linear_cross_entropy(
            low[0].reshape(4, 6, 8), low[1], labels, bias=low[2], reduction=reduction
        ),
        low,
    )
    eager, truth = (
        value_and_grads(lambda: unfused(*low), low),
        value_and_grads(lambda: unfused(*exact), exact),
    )
    assert ours[0].dtype == torch.float32
    assert ours[0].shape == truth[0].shape
    assert all(g.dtype == dtype for g in ours[1])

    def error(got, exact):
        return ((got.double() - exact).norm() / exact.norm()).item()

    for mine, theirs, exact_value in zip(
        (ours[0], *ours[1]), (eager[0], *eager[1]), (truth[0], *truth[1]), strict=True
    ):
        assert error(mine, exact_value) <= error(theirs, exact_value) + torch.finfo(dtype).eps


def test_one_class_is_certain_and_costs_nothing() -> None:
    """C = 1: the softmax is 1, so a probability target of 1 (or the label 0) costs 0, with
    zero gradients."""
    hidden, weight, _, _ = head(5, 3, 1)
    for target in (torch.ones(5, 1, dtype=torch.float64), torch.zeros(5, dtype=torch.long)):
        loss = linear_cross_entropy(hidden, weight, target)
        grads = torch.autograd.grad(loss, (hidden, weight))
        assert loss.item() == 0.0
        assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_label_outside_the_classes_is_refused_by_every_kernel(dtype) -> None:
    """float32 rows go to the compiled kernel, which refuses the label itself; float64 rows
    to torch ops, which need the check before the pass."""
    hidden, weight, _, _ = head(dtype=dtype)
    labels = torch.zeros(23, dtype=torch.long)
    labels[5] = 17
    with pytest.raises(
        ValueError,
        match=r"^`target` must be class indices in \[0, 17\) or ignore_index -100; got 17 at "
        r"position \(5,\)$",
    ):
        linear_cross_entropy(hidden, weight, labels)
