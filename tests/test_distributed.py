"""Vocabulary-parallel losses on 2 and 4 CPU processes (gloo) against the single-process loss.

Every case is computed once on one process with all classes, and once split over the ranks of
:func:`crossent.torch.distributed.launch`; the ranks' losses must equal the single-process
loss, the concatenation of their logits' (or weights') gradients its gradient, and each rank's
∂hidden the full ∂hidden, up to float64 rounding. All cases of one world size run in one
launch, so the suite starts only a few process groups. Slices are uneven, one is empty, and
labels fall on every rank's slice.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist

from crossent.torch import _torch_ops, cross_entropy, linear_cross_entropy
from crossent.torch.distributed import (
    WorkerError,
    _sharded,
    launch,
    report,
    vocab_parallel_cross_entropy,
    vocab_parallel_linear_cross_entropy,
)
from tests.conftest import random_logits, random_probs

pytestmark = pytest.mark.timeout(300)  # even if the launcher's own timeouts failed

CUTS = {  # class boundaries of the ranks' slices: uneven, and one empty for 4 ranks
    (2, 11): [0, 6, 11],
    (4, 11): [0, 1, 5, 5, 11],
    (2, 17): [0, 9, 17],
    (4, 17): [0, 3, 3, 10, 17],
}
OPTIONS = [
    {},
    {"weight": True},
    {"label_smoothing": 0.2},
    {"z_loss": 1e-2, "softcap": 3.0},
    {"weight": True, "label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 5.0, "base": 2.0},
]


@dataclass(frozen=True)
class Case:
    """One loss call: logits given (``hidden`` None) or a linear head."""

    name: str
    target: torch.Tensor
    logits: torch.Tensor | None = None
    hidden: torch.Tensor | None = None
    weight: torch.Tensor | None = None  # the head's (C, D)
    bias: torch.Tensor | None = None
    options: dict[str, Any] = field(default_factory=dict)
    reduction: str = "mean"

    @property
    def classes(self) -> int:
        assert self.logits is not None or self.weight is not None
        return self.logits.shape[1] if self.logits is not None else self.weight.shape[0]  # type: ignore[union-attr]


def _labels(rows: int, classes: int, generator: torch.Generator) -> torch.Tensor:
    """Labels on every class (so on every rank's slice), the rest random, some ignored."""
    labels = torch.randint(0, classes, (rows,), generator=generator)
    labels[:classes] = torch.arange(classes)
    labels[[classes + 1, classes + 4]] = -100
    return labels


def logits_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(random_logits(rng, (37, 11), 0.15))
    logits[12] = -math.inf  # an ignored row of −inf logits (pytorch#11551)
    labels = _labels(37, 11, generator)
    labels[12] = -100
    logits[20, :6] = -math.inf  # a whole slice of −inf where the label is elsewhere
    labels[20] = 8
    ruled_out = (labels >= 0) & (logits.gather(1, labels.clamp(min=0)[:, None])[:, 0] == -math.inf)
    logits[ruled_out, labels[ruled_out]] = 0.0  # finite losses: sums and means are numbers
    at_minus_inf = labels.clone()
    at_minus_inf[20] = 0  # one label the model rules out: that row's loss is +inf
    probs = torch.from_numpy(random_probs(rng, (37, 11)))
    soft = torch.where(probs == 0, -math.inf, logits.nan_to_num(neginf=0.0))  # 0 where −inf
    cases = []
    for index, options in enumerate(OPTIONS):
        for reduction in ("mean", "sum", "none"):
            cases.append(Case(f"index-{index}-{reduction}", labels, logits, options=options,
                              reduction=reduction))  # fmt: skip
            cases.append(Case(f"probs-{index}-{reduction}", probs, soft, options=options,
                              reduction=reduction))  # fmt: skip
    spatial = torch.randn(5, 11, 3, generator=generator, dtype=torch.float64)
    cases += [
        Case("all-ignored", torch.full((37,), -100), logits),
        Case("spatial", torch.randint(0, 11, (5, 3), generator=generator), spatial),
        Case("bfloat16", labels, logits.to(torch.bfloat16), options={"z_loss": 1e-3}),
        Case("label-at-minus-inf", at_minus_inf, logits, reduction="none"),
    ]
    return cases


def linear_cases() -> list[Case]:
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(29, 6, generator=generator, dtype=torch.float64)
    weight = torch.randn(17, 6, generator=generator, dtype=torch.float64)
    bias = torch.randn(17, generator=generator, dtype=torch.float64)
    labels = _labels(29, 17, generator)
    probs = torch.from_numpy(random_probs(np.random.default_rng(1), (29, 17)))
    cases = []
    for index, options in enumerate(OPTIONS):
        for reduction in ("mean", "sum", "none"):
            chunked = {**options, "chunk_size": 8}  # four chunks of rows, each combined
            name = f"linear-{index}-{reduction}"
            cases.append(Case(name, labels, hidden=hidden, weight=weight, bias=bias,
                              options=chunked, reduction=reduction))  # fmt: skip
    cases += [
        Case("linear-probs", probs, hidden=hidden, weight=weight, options={"label_smoothing": 0.1}),
        Case(
            "linear-probs-weighted",
            probs,
            hidden=hidden,
            weight=weight,
            bias=bias,
            options={"weight": True, "softcap": 3.0},
            reduction="none",
        ),
        Case(
            "linear-no-bias-lse",
            labels,
            hidden=hidden,
            weight=weight,
            options={"return_lse": True, "z_loss": 1e-2},
        ),
    ]
    return cases


def run_case(
    case: Case, lo: int, hi: int, sharded: bool
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The loss (and lse) and gradients of one case, on classes lo:hi (of all, if not sharded).

    Gradients are those of ⟨upstream, loss⟩ for a fixed random upstream, so that "none" is
    checked with a different factor per example.
    """
    options = dict(case.options)
    if options.pop("weight", False):
        options["weight" if case.hidden is None else "class_weight"] = torch.linspace(
            0.5, 2.0, case.classes, dtype=torch.float64
        )
    target = case.target if not case.target.is_floating_point() else case.target[:, lo:hi]
    wanted = [target.clone().requires_grad_()] if target.is_floating_point() else []
    target = wanted[0] if wanted else target  # probability targets get their gradient too
    if case.hidden is None:
        assert case.logits is not None
        local = case.logits[:, lo:hi].clone().requires_grad_()
        loss_fn = vocab_parallel_cross_entropy if sharded else cross_entropy
        inputs = [local]
        out = loss_fn(local, target, reduction=case.reduction, **options)
    else:
        assert case.weight is not None
        hidden = case.hidden.clone().requires_grad_()
        weight = case.weight[lo:hi].clone().requires_grad_()
        inputs = [hidden, weight]
        if case.bias is not None:
            inputs.append(case.bias[lo:hi].clone().requires_grad_())
        bias = inputs[2] if len(inputs) > 2 else None
        if sharded:
            out = vocab_parallel_linear_cross_entropy(
                hidden, weight, target, local_bias=bias, reduction=case.reduction, **options
            )
        else:
            out = linear_cross_entropy(
                hidden, weight, target, bias=bias, reduction=case.reduction, **options
            )
    loss, lse = out if isinstance(out, tuple) else (out, None)
    upstream = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype).reshape(loss.shape)
    grads = list(torch.autograd.grad(loss, inputs + wanted, upstream))
    values = loss.detach() if lse is None else torch.stack([loss.detach(), lse.sum()])
    return values, grads


def _rank_results(rank: int, world: int, cases: list[Case], tiny_chunks: bool) -> list[Any]:
    """In a worker: every case on this rank's slice of the classes; with ``tiny_chunks``,
    chunks of a few rows combined in groups of a few chunks."""
    if tiny_chunks:
        _torch_ops.CHUNK_ELEMENTS, _sharded.GROUP_BYTES = (
            24,
            3 * 24 * 8,
        )  # 2–24 rows, 3 chunks a group
    results = []
    for case in cases:
        cuts = CUTS[(world, case.classes)]
        results.append(run_case(case, cuts[rank], cuts[rank + 1], sharded=True))
    return results


ALL_CASES = logits_cases() + linear_cases()


@pytest.fixture(
    scope="module",
    params=[(2, False), (4, False), (2, True), (4, True)],
    ids=["2-processes", "4-processes", "2-processes-tiny-chunks", "4-processes-tiny-chunks"],
)
def world_results(request: pytest.FixtureRequest) -> tuple[int, list[Any]]:
    world, tiny_chunks = request.param
    return world, launch(_rank_results, world, args=(ALL_CASES, tiny_chunks), timeout=300)


@pytest.mark.parametrize("number", range(len(ALL_CASES)), ids=[c.name for c in ALL_CASES])
def test_equals_the_single_process_loss(world_results, number: int) -> None:
    world, results = world_results
    case = ALL_CASES[number]
    value, grads = run_case(case, 0, case.classes, sharded=False)
    # bfloat16 gradients: two roundings of the same float32 number apart at most (2 units)
    low = case.logits is not None and case.logits.dtype == torch.bfloat16
    tolerance = {"rtol": 1.6e-2, "atol": 1e-7} if low else {"rtol": 1e-10, "atol": 1e-12}
    for rank in range(world):
        rank_value, _ = results[rank][number]
        torch.testing.assert_close(rank_value, value, **tolerance)
    if case.target.is_floating_point():  # ∂target: each rank's slice of the classes
        joined = torch.cat([results[rank][number][1][-1] for rank in range(world)], dim=1)
        torch.testing.assert_close(joined, grads.pop(), **tolerance)
    if case.hidden is None:  # each rank's logits gradient is its slice of the whole one
        joined = torch.cat([results[rank][number][1][0] for rank in range(world)], dim=1)
        torch.testing.assert_close(joined, grads[0], **tolerance)
        return
    for rank in range(world):  # ∂hidden: the whole of it on every rank
        torch.testing.assert_close(results[rank][number][1][0], grads[0], **tolerance)
    for position in range(1, len(grads)):  # ∂W and ∂b: each rank's rows
        joined = torch.cat([results[rank][number][1][position] for rank in range(world)])
        torch.testing.assert_close(joined, grads[position], **tolerance)


def test_ignored_rows_have_zero_loss_and_gradient_on_every_rank(world_results) -> None:
    world, results = world_results
    number = next(i for i, c in enumerate(ALL_CASES) if c.name == "index-0-none")
    for rank in range(world):
        loss, (grad,) = results[rank][number]
        assert loss[[12, 15]].eq(0).all()
        assert grad[[12, 15]].eq(0).all()  # exactly 0, also on the −inf row 12
        assert torch.isfinite(loss[20])
        assert torch.isfinite(grad[20]).all()


def _bytes_per_row(rank: int, world: int, rows: int, classes: int) -> list[tuple[float, int]]:
    """In a worker: bytes this rank sends into all-reduces per row, and how many all-reduces,
    for index targets without and with label smoothing (float32 logits of ``classes`` classes
    split evenly)."""
    counted = []
    all_reduce = dist.all_reduce

    def counting(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        counted.append(tensor.numel() * tensor.element_size())
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counting
    logits = torch.randn(rows, classes // world, requires_grad=True)
    labels = torch.randint(0, classes, (rows,))
    per_row = []
    for smoothing in (0.0, 0.1):
        counted.clear()
        vocab_parallel_cross_entropy(logits, labels, label_smoothing=smoothing).backward()
        per_row.append((sum(counted) / rows, len(counted)))
    return per_row


def test_communication_is_a_few_numbers_per_row_in_two_all_reduces() -> None:
    """1024 rows of 4096 classes are four chunks, combined at once: latency, not bytes, is
    what each all-reduce costs."""
    results = launch(_bytes_per_row, 2, args=(1024, 4096), timeout=120)
    for plain, smoothed in results:
        assert plain == (12.0, 2)  # max, then Σ exp and x_y: 3 float32 per row
        assert smoothed == (16.0, 2)  # and Σ_j x_j
    # gathering the logits instead would move (P − 1)/P · C · 4 = 8192 bytes per row


def _in_pairs(rank: int, world: int) -> tuple[float, float]:
    """Four ranks as two groups of two, each group splitting its own logits' classes."""
    groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every rank makes every group
    pair = rank // 2
    generator = torch.Generator().manual_seed(pair)
    logits = torch.randn(9, 7, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 7, (9,), generator=generator)
    lo, hi = [(0, 3), (3, 7)][rank % 2]
    loss = vocab_parallel_cross_entropy(logits[:, lo:hi], labels, group=groups[pair])
    return float(loss), float(cross_entropy(logits, labels))


def test_a_group_splits_the_classes_among_its_own_ranks() -> None:
    results = launch(_in_pairs, 4, timeout=120)
    assert results[0][1] != results[2][1]  # the two groups had different logits
    for split, whole in results:
        assert split == pytest.approx(whole, rel=1e-12)


def test_ranks_with_different_rows_are_refused_naming_them() -> None:
    with pytest.raises(WorkerError, match=r"rank 0: 4, rank 1: 5"):
        launch(_uneven_rows, 2, timeout=60)


def _uneven_rows(rank: int, world: int) -> None:
    vocab_parallel_cross_entropy(torch.randn(4 + rank, 3), torch.zeros(4 + rank, dtype=torch.long))


def test_without_a_process_group_the_error_says_what_to_do() -> None:
    with pytest.raises(RuntimeError, match="init_process_group"):
        vocab_parallel_cross_entropy(torch.randn(4, 3), torch.zeros(4, dtype=torch.long))


def test_low_memory_is_refused_on_a_shard() -> None:
    with pytest.raises(WorkerError, match=r"low_memory=True.*got a shard of the classes"):
        launch(_low_memory_shard, 2, timeout=60)


def _low_memory_shard(rank: int, world: int) -> None:
    from crossent.torch._head_loss import head_loss_of
    from crossent.torch._head_pass import Head, HeadPlan
    from crossent.torch._spec import LossOptions
    from crossent.torch.distributed.vocab_parallel import class_shard

    shard = class_shard(3, 4, torch.device("cpu"), None)
    head = Head(torch.randn(4, 2), torch.randn(3, 2), None, torch.zeros(4, dtype=torch.long))
    head_loss_of(head, LossOptions(), HeadPlan(low_memory=True), shard)


# --- the launcher: results, messages, and failures that must not hang the suite ---


def _echo(rank: int, world: int, text: str) -> tuple[int, int, str]:
    report(f"{text} from {rank}")
    total = torch.tensor([rank + 1.0])
    dist.all_reduce(total)
    return rank, world, f"{text} {total.item():g}"


def test_launch_returns_each_ranks_result_and_passes_messages_on() -> None:
    messages: list[tuple[int, Any]] = []
    results = launch(
        _echo, 3, args=("hello",), timeout=60, on_message=lambda r, m: messages.append((r, m))
    )
    assert results == [(0, 3, "hello 6"), (1, 3, "hello 6"), (2, 3, "hello 6")]
    assert sorted(messages) == [(0, "hello from 0"), (1, "hello from 1"), (2, "hello from 2")]


def _fails_on_rank_one(rank: int, world: int) -> None:
    if rank == 1:
        raise ValueError("the data of rank 1 is bad")
    dist.barrier()  # rank 0 would wait here for ever without the launcher


def test_a_rank_that_raises_stops_all_with_its_traceback() -> None:
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"(?s)rank 1 failed:.*the data of rank 1 is bad"):
        launch(_fails_on_rank_one, 2, timeout=120)
    assert time.monotonic() - start < 60


def _dies_on_rank_one(rank: int, world: int) -> None:
    if rank == 1:
        os._exit(3)
    dist.barrier()


def test_a_rank_that_dies_is_named_with_its_exit_code() -> None:
    with pytest.raises(WorkerError, match="rank 1 exited with code 3"):
        launch(_dies_on_rank_one, 2, timeout=120)


def _hangs_on_rank_zero(rank: int, world: int) -> None:
    if rank == 0:
        time.sleep(3600)


def test_a_rank_that_hangs_is_stopped_at_the_timeout() -> None:
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"rank 0 had not finished after the timeout of 3 s"):
        launch(_hangs_on_rank_zero, 2, timeout=3)
    assert time.monotonic() - start < 20


def test_launch_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="`processes` must be a whole number ≥ 1; got 0"):
        launch(_echo, 0)
    with pytest.raises(ValueError, match="`timeout`"):
        launch(_echo, 2, timeout=0)


def test_cases_cover_every_slice() -> None:
    """The cases are what the module docstring promises: labels on every slice, an empty one."""
    for (world, classes), cuts in CUTS.items():
        widths = np.diff(cuts)
        assert cuts[-1] == classes
        assert len(widths) == world
        assert (widths >= 0).all()
    assert any((np.diff(cuts) == 0).any() for cuts in CUTS.values())
    labels = next(c for c in ALL_CASES if c.name == "index-0-mean").target
    assert set(range(11)) <= set(labels.tolist())


def _add_rank(rank: int, world: int, tensor: torch.Tensor) -> float:
    tensor += rank + 1  # in place: must touch this worker's copy only
    dist.barrier()
    return float(tensor.sum())


def test_each_worker_gets_its_own_copy_of_the_arguments() -> None:
    tensor = torch.zeros(3)
    assert launch(_add_rank, 2, args=(tensor,), timeout=60) == [3.0, 6.0]
    assert tensor.eq(0).all()


def test_the_torchrun_check_of_the_docs_passes() -> None:
    """docs/distributed.md's first command: torchrun, two ranks, the losses against one."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "crossent.torch.distributed.check"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 ranks (gloo, cpu)" in done.stdout
    assert "16 bytes sent into all-reduces per row" in done.stdout
    assert done.stdout.rstrip().endswith("OK")


def _collectives_before_bad_input(rank: int, world: int) -> tuple[str, int]:
    """In a worker: a probability target of the wrong shape; the error, and how many
    collectives this rank had entered before it."""
    entered = []
    for name in ("all_gather", "all_reduce"):
        collective = getattr(dist, name)
        setattr(dist, name, lambda *a, c=collective, **k: entered.append(1) or c(*a, **k))
    logits = torch.randn(4, 3, requires_grad=True)
    try:
        vocab_parallel_cross_entropy(logits, torch.softmax(torch.randn(4, 2), dim=1))
    except ValueError as error:
        return str(error), len(entered)
    return "no error", len(entered)


def test_a_rank_with_bad_input_raises_before_any_collective() -> None:
    """Else it would leave the other ranks waiting in that collective (under torchrun, until
    the process group's timeout)."""
    for message, entered in launch(_collectives_before_bad_input, 2, timeout=120):
        assert "must have the shape of `logits`" in message
        assert entered == 0


def _unpicklable(rank: int, world: int) -> object:
    return lambda: rank  # a lambda does not pickle


def test_a_result_that_cannot_be_sent_back_is_that_ranks_error() -> None:
    with pytest.raises(WorkerError, match=r"rank 0 failed:(?s:.*)(pickle|Pickling)"):
        launch(_unpicklable, 1, timeout=60)


def test_double_backward_through_a_split_loss_is_a_clear_error() -> None:
    """The vocabulary-parallel losses' gradient is not a graph: create_graph=True raises an
    error that says so, never a detached gradient; for the logits' loss and the head's."""
    logits, head = launch(_double_backward_of_a_shard, 2, timeout=120)[0]
    assert logits == (
        "crossent.torch.distributed: the vocabulary-parallel losses have no double backward "
        "(create_graph=True) or torch.func support: their gradient is not a graph"
    )
    assert head == (
        "crossent.torch.distributed: the vocabulary-parallel losses have no double backward "
        "(create_graph=True): their gradient is not a graph"
    )


def _double_backward_of_a_shard(rank: int, world: int) -> list[str]:
    from crossent.torch.distributed import (
        vocab_parallel_cross_entropy,
        vocab_parallel_linear_cross_entropy,
    )

    messages = []
    logits, hidden = torch.randn(4, 3, requires_grad=True), torch.randn(4, 2, requires_grad=True)
    weight, labels = torch.randn(3, 2), torch.tensor([0, 1, 5, 2])
    for loss, wrt in (
        (vocab_parallel_cross_entropy(logits, labels), logits),
        (vocab_parallel_linear_cross_entropy(hidden, weight, labels), hidden),
    ):
        try:
            torch.autograd.grad(loss, wrt, create_graph=True)
        except RuntimeError as error:
            messages.append(str(error))
    return messages
