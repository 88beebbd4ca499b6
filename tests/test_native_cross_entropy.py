"""The compiled CPU kernel (``crossent/torch/_native.c``) at every instruction-set level this CPU
runs, and the torch-ops pass it replaces, against float64 math; and the reused gradient memory."""

from __future__ import annotations

import math
import shlex
import shutil
import sysconfig
import threading

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from crossent.torch import (
    _native_rows,
    _pool,
    _reuse,
    _torch_ops,
    cross_entropy,
    cross_entropy_reference,
    empty_cache,
)
from crossent.torch._dispatch import rows_kernel
from crossent.torch._spec import LossOptions as Options

LEVELS = [] if _native_rows._native is None else _native_rows._native.levels()
INF = math.inf


def loss_and_grad(logits, target, options, grad_scale, grad, lse=None):
    """The pass the dispatch rule picks: the compiled kernel where it runs, else torch ops."""
    kernel = rows_kernel(logits, target, options, grad)
    return kernel(logits, target, options, grad_scale, grad, lse)


class CountingKernel:
    """The compiled module, counting its calls."""

    def __init__(self, module) -> None:
        self.module, self.calls = module, 0

    def levels(self) -> list[int]:
        return self.module.levels()

    def index_rows(self, *args):
        self.calls += 1
        return self.module.index_rows(*args)


@pytest.fixture(
    params=[None, *LEVELS], ids=lambda level: "torch-ops" if level is None else f"level{level}"
)
def level(request, monkeypatch) -> int | None:
    """Run the test with the torch-ops pass (None) or the compiled kernel at this level;
    the kernel's calls are counted, so a test can check it really ran."""
    monkeypatch.setattr(_native_rows, "NATIVE_LEVEL", request.param)
    if _native_rows._native is not None:
        monkeypatch.setattr(_native_rows, "_native", CountingKernel(_native_rows._native))
    return request.param


def ran_native(level: int | None) -> bool:
    calls = getattr(_native_rows._native, "calls", 0)
    return calls > 0 if level is not None else calls == 0


def test_the_kernel_is_built_where_there_is_a_c_compiler() -> None:
    compiler = shlex.split(sysconfig.get_config_var("CC") or "cc")[0]
    if shutil.which(compiler) is None:
        pytest.skip(f"no C compiler ({compiler}): crossent computes with torch ops")
    assert _native_rows._native is not None, (
        "the C extension was not built: `pip install -e .` again"
    )
    assert LEVELS[0] == 0
    assert LEVELS[-1] == _native_rows.NATIVE_LEVEL


def problem(rows: int, classes: int, seed: int = 0):
    """float32 logits (spread ±12), labels with every third row ignored, class weights."""
    generator = torch.Generator().manual_seed(seed)
    logits = (4 * torch.randn(rows, classes, generator=generator)).float()
    labels = torch.randint(0, classes, (rows,), generator=generator)
    labels[::3] = -100
    weight = torch.rand(classes, generator=generator) + 0.1
    return logits, labels, weight


def value_and_grad(fn, logits, labels, **options):
    """Loss and gradient, with a random upstream gradient for reduction "none"."""
    x = logits.detach().clone().requires_grad_(True)
    loss = fn(x, labels, **options)
    upstream = torch.randn(loss.shape, generator=torch.Generator().manual_seed(1)).to(loss.dtype)
    (loss * upstream).sum().backward()
    return loss.detach().double(), x.grad.double()


OPTIONS = [
    {},
    {"weight": True},
    {"label_smoothing": 0.1},
    {"weight": True, "label_smoothing": 0.25},
    {"z_loss": 1e-3},
    {"weight": True, "label_smoothing": 1.0, "z_loss": 1e-4},
]


@pytest.mark.parametrize("classes", [1, 3, 17, 423, 32000])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(o) or "plain")
def test_float32_equals_float64_math(level, classes, reduction, options) -> None:
    rows = 40 if classes < 1000 else 5
    logits, labels, weight = problem(rows, classes, seed=classes)
    options = {**options, "reduction": reduction}
    if options.pop("weight", False):
        options["weight"] = weight
    ours = value_and_grad(cross_entropy, logits, labels, **options)
    wide = {**options, "weight": weight.double()} if "weight" in options else options
    exact = value_and_grad(cross_entropy_reference, logits.double(), labels, **wide)
    for a, b in zip(ours, exact, strict=True):
        torch.testing.assert_close(a, b, rtol=2e-5, atol=2e-6)
    assert ran_native(level)


def test_probabilities_are_within_a_few_float32_roundings(level) -> None:
    """Logits spread over ±80: the gradient of a "sum" is p − onehot(y), so away from the label
    it is the softmax itself, against float64's."""
    generator = torch.Generator().manual_seed(7)
    logits = (torch.rand(64, 4096, generator=generator) * 160 - 80).float().requires_grad_(True)
    cross_entropy(logits, torch.zeros(64, dtype=torch.long), reduction="sum").backward()
    p = logits.grad[:, 1:].double()
    exact = torch.softmax(logits.detach().double(), dim=1)[:, 1:]
    normal = exact > 1e-30  # float32 flushes smaller ones to 0 (or a denormal, for torch ops)
    assert ((p - exact).abs() / exact)[normal].max() < 4e-7  # measured: 2.3e-7 to 3.4e-7
    assert (p[~normal] < 1e-30).all()
    assert ran_native(level)


def test_edge_cases_follow_the_math(level) -> None:
    logits = torch.tensor(
        [
            [0.0, -INF, 1.0, 2.0],  # label at −inf: loss +inf, gradient finite
            [-INF, -INF, -INF, -INF],  # all −inf and ignored: loss 0, gradient exactly 0
            [1e30, 0.0, -1e30, 5.0],  # huge logits: finite loss, finite gradient
            [0.0, -100.0, -200.0, -INF],  # underflow: probabilities 0, no NaN
            [0.0, math.nan, 1.0, 2.0],  # a NaN logit: this row's loss and gradient are NaN
            [0.0, INF, 1.0, 2.0],  # +inf: NaN, as torch's softmax
        ]
    )
    labels = torch.tensor([1, -100, 1, 0, 0, 0])
    loss, grad = value_and_grad(cross_entropy, logits, labels, reduction="none")
    assert loss[0] == INF
    assert torch.isfinite(grad[0]).all()
    assert loss[1] == 0
    assert (grad[1] == 0).all()
    assert loss[2] == pytest.approx(1e30)
    assert torch.isfinite(grad[2]).all()
    assert loss[3] == pytest.approx(math.log1p(math.exp(-100) + math.exp(-200)), abs=1e-7)
    assert torch.isfinite(grad[3]).all()
    assert loss[4:].isnan().all()
    assert grad[4:].isnan().all()
    assert ran_native(level)


def test_a_class_of_weight_zero_adds_nothing_even_at_minus_inf(level) -> None:
    logits = torch.tensor([[0.0, -INF, 1.0], [2.0, -INF, 0.5]])
    weight = torch.tensor([1.0, 0.0, 2.0])
    labels = torch.tensor([1, 0])  # row 0's label has weight 0 and logit −inf
    loss, grad = value_and_grad(
        cross_entropy, logits, labels, weight=weight, label_smoothing=0.3, reduction="none"
    )
    exact = [  # the terms of weight 0 dropped by hand
        0.1 * (3.0 * torch.logsumexp(logits[i], 0) - (weight * logits[i].nan_to_num(0.0)).sum())
        for i in range(2)
    ]
    exact[1] = exact[1] + 0.7 * (torch.logsumexp(logits[1], 0) - 2.0)
    torch.testing.assert_close(loss, torch.stack(exact).double(), rtol=1e-6, atol=1e-6)
    assert torch.isfinite(grad).all()
    assert ran_native(level)


def test_strided_rows_row_factors_and_log_sum_exps(level) -> None:
    """The kernel's own interface: rows of a wider buffer, one gradient factor per row, the
    log-sum-exps, and a gradient written over the logits."""
    logits, labels, weight = problem(30, 50, seed=5)
    wide = torch.full((30, 57), math.nan)
    wide[:, :50] = logits
    strided = wide[:, :50]
    options = Options(weight, -100, 0.1, 1e-3, None)
    factor = torch.rand(30, dtype=torch.float64)
    grads, losses, lses = [], [], []
    for source in (logits.clone(), strided):
        grad = torch.full((30, 61), math.nan)[:, 3:53]
        lse = torch.empty(30)
        losses.append(loss_and_grad(source, labels, options, factor, grad, lse))
        grads.append(grad)
        lses.append(lse)
    in_place = strided.clone()
    losses.append(loss_and_grad(in_place, labels, options, factor, in_place))
    grads.append(in_place)
    for other in (1, 2):
        torch.testing.assert_close(losses[other], losses[0], rtol=0, atol=0)
        torch.testing.assert_close(grads[other], grads[0], rtol=0, atol=0)
    torch.testing.assert_close(lses[1], lses[0], rtol=0, atol=0)
    torch.testing.assert_close(lses[0], torch.logsumexp(logits, 1), rtol=1e-6, atol=1e-6)
    assert ran_native(level)


def test_a_bad_label_past_the_checks_is_refused_not_read(level) -> None:
    """The kernel itself refuses a label outside [0, C), naming it: reading x_y there would
    read past the row (torch's gather refuses it too). The public function checks labels
    first; this calls the pass directly."""
    logits = torch.zeros(4, 5)
    labels = torch.tensor([0, -100, 7, 1])
    refusal = (
        (RuntimeError, "out of bounds")
        if level is None
        else (ValueError, r"got 7 at position \(2,\)")
    )
    with pytest.raises(refusal[0], match=refusal[1]):
        loss_and_grad(logits, labels, Options(None, -100, 0.0, 0.0, None), None, None)


@pytest.mark.parametrize("threads", [1, 2])
def test_chunks_and_threads_change_no_bit(level, monkeypatch, threads) -> None:
    logits, labels, weight = problem(37, 300, seed=9)
    options = {"weight": weight, "label_smoothing": 0.1, "reduction": "none"}
    whole = value_and_grad(cross_entropy, logits, labels, **options)
    monkeypatch.setattr(_torch_ops, "CHUNK_ELEMENTS", 4 * 300)
    monkeypatch.setattr(_native_rows, "NATIVE_CHUNK_ELEMENTS", 4 * 300)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        chunked = value_and_grad(cross_entropy, logits, labels, **options)
    finally:
        torch.set_num_threads(before)
    for a, b in zip(chunked, whole, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert ran_native(level)


@pytest.mark.skipif(not LEVELS, reason="the C extension is not built")
@given(
    seed=st.integers(0, 2**31 - 1),
    rows=st.integers(1, 9),
    classes=st.integers(1, 70),
    smoothing=st.sampled_from([0.0, 0.2]),
    weighted=st.booleans(),
    z_loss=st.sampled_from([0.0, 1e-2]),
    minus_inf=st.booleans(),
)
def test_every_level_equals_the_torch_ops_pass(
    seed, rows, classes, smoothing, weighted, z_loss, minus_inf
) -> None:
    logits, labels, weight = problem(rows, classes, seed)
    if minus_inf:
        logits[:, ::4] = -INF
    options = {
        "label_smoothing": smoothing,
        "z_loss": z_loss,
        "reduction": "none",
        "weight": weight if weighted else None,
    }
    results = {}
    for level in [None, *LEVELS]:
        before, _native_rows.NATIVE_LEVEL = _native_rows.NATIVE_LEVEL, level
        try:
            results[level] = value_and_grad(cross_entropy, logits, labels, **options)
        finally:
            _native_rows.NATIVE_LEVEL = before
    for level in LEVELS:
        for a, b in zip(results[level], results[None], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, equal_nan=True)


# ---- the reused gradient memory ----

BIG = (256, 32768)  # 32 MiB of float32: kept


@pytest.fixture
def nothing_kept():
    empty_cache()
    yield
    empty_cache()


def test_a_freed_gradient_is_reused_and_a_live_one_never(nothing_kept) -> None:
    logits, labels, _ = problem(*BIG, seed=1)
    first = logits.clone().requires_grad_(True)
    cross_entropy(first, labels).backward()
    kept = first.grad.clone()
    second = (-logits).requires_grad_(True)
    cross_entropy(second, labels).backward()
    assert second.grad.data_ptr() != first.grad.data_ptr()
    assert torch.equal(first.grad, kept), "a gradient in use was written over"
    address = second.grad.data_ptr()
    del second
    third = logits.clone().requires_grad_(True)
    cross_entropy(third, labels).backward()
    assert third.grad.data_ptr() == address
    torch.testing.assert_close(third.grad, kept, rtol=0, atol=0)


def test_views_and_other_dtypes_of_the_kept_buffer(nothing_kept) -> None:
    first = _reuse.empty(BIG, torch.float32)
    address = first.data_ptr()
    view = first[5:7]
    del first
    second = _reuse.empty(BIG, torch.float32)
    assert second.data_ptr() != address  # the view holds it
    del view
    other = _reuse.empty((BIG[0], BIG[1] * 3 // 2), torch.float16)  # 3/4 of it, another dtype
    assert other.data_ptr() == address
    assert other.dtype == torch.float16
    assert other.shape == (BIG[0], BIG[1] * 3 // 2)
    assert _reuse.empty((2, 3), torch.bfloat16).dtype == torch.bfloat16  # NumPy has none
    del other, second
    empty_cache()
    assert _reuse._Kept.buffers == []


def test_small_buffers_are_not_kept_and_never_pin_a_large_one(nothing_kept) -> None:
    large = (4 * BIG[0], BIG[1])
    address = _reuse.empty(large, torch.float32).data_ptr()
    small = _reuse.empty((10, 10), torch.float32)  # a small loss first in a step ...
    quarter = _reuse.empty(BIG, torch.float32)  # ... or one of a quarter the size (kept too)
    assert len(_reuse._Kept.buffers) == 2
    assert _reuse.empty(large, torch.float32).data_ptr() == address  # leave it to the large one
    del small, quarter


def test_two_losses_a_step_each_reuse_their_memory(nothing_kept) -> None:
    def step() -> list[int]:
        first, second = _reuse.empty(BIG, torch.float32), _reuse.empty(BIG, torch.float32)
        return [first.data_ptr(), second.data_ptr()]

    warm = step()
    assert sorted(step()) == sorted(warm)


def test_a_larger_request_gives_back_the_smaller_unused_buffer_first(nothing_kept) -> None:
    _reuse.empty(BIG, torch.float32)
    larger = _reuse.empty((2 * BIG[0], BIG[1]), torch.float32)
    assert [kept.nbytes for kept in _reuse._Kept.buffers] == [larger.numel() * 4]


def test_threads_never_share_a_live_buffer(nothing_kept) -> None:
    barrier = threading.Barrier(4)
    held: list[torch.Tensor] = []
    lock = threading.Lock()

    def take() -> None:
        barrier.wait()
        for _ in range(20):
            tensor = _reuse.empty(BIG, torch.float32)
            with lock:
                held.append(tensor)
            if len(held) > 8:
                with lock:
                    held.pop(0)

    workers = [threading.Thread(target=take) for _ in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    addresses = [tensor.data_ptr() for tensor in held]
    assert len(set(addresses)) == len(addresses)


# ---- found by review: inputs the kernel must never misread ----


def test_a_target_of_the_wrong_length_is_refused_before_any_pass(level) -> None:
    logits = torch.randn(4096, 8)
    for target in (torch.tensor(3), torch.tensor([1, 2, 3]), torch.zeros(4095, dtype=torch.long)):
        with pytest.raises(ValueError, match=r"index `target` must have the shape .* \(4096,\)"):
            cross_entropy(logits, target)


def test_rows_that_share_memory(level) -> None:
    """Expanded logits (every row the same memory): read, they give every row's answer;
    written over in place, torch's refusal, never a number computed from a half-written row."""
    row = torch.randn(1, 5, 1, generator=torch.Generator().manual_seed(2))
    shared = row.expand(1, 5, 4)
    labels = torch.tensor([[0, 1, 2, 3]])
    expected = cross_entropy_reference(shared.double(), labels, reduction="none").float()
    torch.testing.assert_close(cross_entropy(shared, labels, reduction="none"), expected)
    with pytest.raises(RuntimeError, match="single memory location"):
        cross_entropy(shared.requires_grad_(True), labels, inplace_backward=True)


def test_z_loss_zero_adds_nothing_to_a_row_of_weight_zero(level) -> None:
    """A label of class weight 0 contributes 0 whatever its row's log-sum-exp, NaN included;
    z-loss 0 must not turn that into 0 · NaN."""
    logits = torch.tensor([[-INF, -INF, -INF], [0.0, 1.0, 2.0], [math.nan, 0.0, 1.0]])
    loss = cross_entropy(
        logits, torch.tensor([0, 1, 0]), weight=torch.tensor([0.0, 1.0, 1.0]), reduction="none"
    )
    assert loss[0] == 0
    assert loss[2] == 0
    assert loss[1] == pytest.approx(torch.logsumexp(logits[1], 0).item() - 1.0)
    assert ran_native(level)


def test_long_rows_are_summed_as_exactly_as_torch_does_or_better(level) -> None:
    """262,144 classes of N(0, 4²) logits: the softmax's error against float64 (torch's own
    float32 pass measured 3.2e-5 here; the kernel adds its row sums up in double: 2.0e-6)."""
    logits = 4 * torch.randn(3, 262144, generator=torch.Generator().manual_seed(3))
    logits.requires_grad_(True)
    cross_entropy(logits, torch.zeros(3, dtype=torch.long), reduction="sum").backward()
    exact = torch.softmax(logits.detach().double(), dim=1)[:, 1:]
    error = ((logits.grad[:, 1:].double() - exact).abs() / exact).max().item()
    assert error < (5e-6 if level is not None else 1e-4)
    assert ran_native(level)


# ---- the threads ----


def test_little_work_is_one_call_and_much_work_four_per_thread(monkeypatch) -> None:
    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert _native_rows._native_rows_per_call(256, 10) == 256  # 2,560 numbers: one call, no thread
    assert _native_rows._native_rows_per_call(4096, 32000) == 512  # 8 calls of 16 Mi numbers
    assert _native_rows._native_rows_per_call(64, 2048) == 32  # 2 calls of the fewest numbers
    assert _native_rows._native_rows_per_call(3, 10**7) == 1  # a row per call, however long


def test_the_pool_is_kept_and_made_again_for_another_thread_count() -> None:
    before = torch.get_num_threads()
    first = _pool._pool(2)
    assert _pool._pool(2) is first
    try:
        torch.set_num_threads(3)
        logits, labels, _ = problem(64, 4096)
        cross_entropy(logits, labels).item()
        assert _pool._Pool.workers == 3
    finally:
        torch.set_num_threads(before)


@pytest.mark.timeout(120)
def test_a_forked_child_computes_the_loss_on_threads_of_its_own() -> None:
    """The parent's pool threads do not exist in a forked child; a child that used the
    parent's pool would wait for ever."""
    import multiprocessing

    logits, labels, _ = problem(512, 4096)
    expected = cross_entropy(logits, labels).item()  # the parent's pool exists now
    assert _pool._Pool.executor is not None or torch.get_num_threads() == 1
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_loss_in_child, (logits, labels)).get(timeout=60)
    assert got == expected


def _loss_in_child(logits: torch.Tensor, labels: torch.Tensor) -> float:
    torch.set_num_threads(2)
    return cross_entropy(logits, labels).item()
