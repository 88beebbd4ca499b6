"""Every backend of the loss against one oracle, by one rule.

The oracle is :func:`crossent.torch.cross_entropy_reference`: the loss in float64, a few lines
per option, importing nothing from the implementation, differentiated by autograd. Every
backend in :data:`BACKENDS` runs every case of :data:`CASES` it accepts through the public
function, and its loss and gradients must be as close to the oracle as the plain PyTorch
computation of the same formula at the input's dtype, plus :data:`TOLERANCE` units in the last
place of the compute dtype (times the size of what is compared). Where the oracle is ±inf the
backend must give the same infinity. A new backend joins by adding one line to the list;
:func:`test_every_implementation_has_a_backend` fails for an implementation that has none.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
import torch

from crossent.torch import (
    _class_blocks,
    _dispatch,
    _native_rows,
    _torch_ops,
    cross_entropy,
    cross_entropy_reference,
    linear_cross_entropy,
)

Tensors = tuple[torch.Tensor, ...]
TOLERANCE = 16  # units in the last place of the compute dtype, times max(1, |oracle|)
DIM = 5  # the linear head's hidden size
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")  # Triton's interpreter


# ---- the cases ----


@dataclass(frozen=True)
class Case:
    """One input and one set of options. ``shape`` is the logits' (classes at dimension 1, or
    ``(C,)``); the linear head takes ``shape`` as (examples..., classes) instead."""

    name: str
    shape: tuple[int, ...] = (7, 37)
    dtype: torch.dtype = torch.float32
    probability: bool = False
    options: dict[str, object] = field(default_factory=dict)
    minus_inf: bool = False  # some logits −inf, and a label on one of them
    all_ignored: bool = False
    layout: str = "contiguous"  # "strided": rows and classes of wider memory; "columns": classes
    # strided by the row count (a transposed buffer)

    @property
    def classes(self) -> int:
        return self.shape[1] if len(self.shape) > 1 else self.shape[0]

    @property
    def weighted(self) -> bool:
        return bool(self.options.get("weight"))


def _cases() -> list[Case]:
    alone = [
        Case("plain"),
        Case("ignore_index 0", options={"ignore_index": 0}),
        Case("ignore_index C-1", options={"ignore_index": 36}),
        Case("class weights", options={"weight": True}),
        Case("label smoothing", options={"label_smoothing": 0.2}),
        Case("z-loss", options={"z_loss": 1e-2}),
        Case("softcap", options={"softcap": 3.0}),
        Case("probability targets", probability=True),
        Case("reduction none", options={"reduction": "none"}),
        Case("reduction sum", options={"reduction": "sum"}),
        Case("bits", options={"base": 2.0}),
        Case("minus inf", minus_inf=True),
        Case("all ignored", all_ignored=True),
        Case("bfloat16", dtype=torch.bfloat16),
        Case("float16", dtype=torch.float16),
        Case("float64", dtype=torch.float64),
        Case("strided", layout="strided"),
        Case("columns", layout="columns"),
        Case("one class", shape=(5, 1)),
        Case("three classes, one row", shape=(1, 3)),
        Case("one example", shape=(11,)),
        Case("examples in 3-D", shape=(3, 9, 4)),
    ]
    everything = {
        "weight": True,
        "label_smoothing": 0.1,
        "z_loss": 1e-3,
        "softcap": 4.0,
        "reduction": "sum",
        "base": 2.0,
    }
    combined = [
        Case("everything", options={**everything, "ignore_index": 0}, minus_inf=True),
        Case("everything, bfloat16", dtype=torch.bfloat16, options=everything, minus_inf=True),
        Case("everything, float16, none", dtype=torch.float16,
             options={**everything, "reduction": "none"}),
        Case("probabilities, everything", probability=True, options=everything, minus_inf=True),
        Case("probabilities, bfloat16, mean", probability=True, dtype=torch.bfloat16,
             options={**everything, "reduction": "mean"}, layout="strided"),
        Case("weights, ignored, mean", options={"weight": True, "ignore_index": 3}, minus_inf=True),
        Case("3-D, everything", shape=(2, 13, 3), options=everything, minus_inf=True),
        Case("all ignored, z-loss and weights", all_ignored=True,
             options={"z_loss": 1e-2, "weight": True}),
    ]  # fmt: skip
    return alone + combined


CASES = _cases()


@dataclass
class Inputs:
    """A case's tensors: the float64 originals (the oracle's) and the backend's."""

    logits: torch.Tensor  # float64, the case's shape
    target: torch.Tensor
    weight: torch.Tensor | None  # float64
    hidden: torch.Tensor  # float64 (examples..., DIM): the linear head's
    head_weight: torch.Tensor  # float64 (C, DIM)
    head_bias: torch.Tensor  # float64 (C,)
    upstream: torch.Tensor  # float64, the loss's shape: drawn once, cast for every backend


def make_inputs(case: Case) -> Inputs:
    generator = torch.Generator().manual_seed(sum(map(ord, case.name)))
    classes = case.classes
    logits = 3 * torch.randn(case.shape, generator=generator, dtype=torch.float64)
    examples = case.shape[:1] + case.shape[2:] if len(case.shape) > 1 else ()
    moved = logits.movedim(1, -1) if logits.dim() > 1 else logits  # (examples..., C)
    ignore_index = int(case.options.get("ignore_index", -100))  # type: ignore[call-overload]
    if case.probability:
        target = torch.softmax(
            torch.randn(case.shape, generator=generator, dtype=torch.float64),
            dim=min(1, logits.dim() - 1),
        )
    else:
        target = torch.randint(0, classes, examples, generator=generator)
        flat = target.view(-1)
        if flat.numel() > 2:
            flat[1] = ignore_index
            flat[-1] = ignore_index if ignore_index >= 0 else flat[-1]
        if case.all_ignored:
            flat.fill_(ignore_index)
    if case.minus_inf:
        rows_c = moved.reshape(-1, classes).clone()
        holes = torch.rand(rows_c.shape, generator=generator) < 0.25
        holes[:, 0] = False  # never a whole row
        rows_c[holes] = -math.inf
        if case.probability:
            t = target.movedim(1, -1).reshape(-1, classes) if target.dim() > 1 else target[None]
            t[holes] = 0.0  # 0 · log 0 = 0 ...
            t[0, holes[0].nonzero()[0]] = 0.05  # ... but mass where the model says 0: inf
            t /= t.sum(dim=-1, keepdim=True)
            if target.dim() > 1:
                target = t.reshape(moved.shape).movedim(-1, 1).contiguous()
            else:
                target = t[0]
        elif target.dim() and classes > 1:
            first = int(target.view(-1)[0])
            if first != ignore_index:
                rows_c[0, first] = -math.inf  # a label the model rules out: loss inf
                rows_c[0, 0 if first else 1] = 0.0
        logits = rows_c.reshape(moved.shape)
        logits = logits.movedim(-1, 1).contiguous() if logits.dim() > 1 else logits
    weight = None
    if case.weighted:
        weight = torch.rand(classes, generator=generator, dtype=torch.float64) + 0.2
        weight[classes // 2] = 0.0  # a class of weight 0
    hidden = torch.randn(*examples, DIM, generator=generator, dtype=torch.float64)
    head_weight = torch.randn(classes, DIM, generator=generator, dtype=torch.float64)
    head_bias = torch.randn(classes, generator=generator, dtype=torch.float64)
    if case.minus_inf and classes > 1:
        head_bias[1::3] = -math.inf  # the head's logits of those classes: −inf
    reduction = case.options.get("reduction", "mean")
    shape = examples if reduction == "none" else ()
    upstream = torch.rand(shape, generator=generator, dtype=torch.float64) + 0.5
    return Inputs(logits, target, weight, hidden, head_weight, head_bias, upstream)


def options_of(case: Case, inputs: Inputs, dtype: torch.dtype | None = None) -> dict[str, object]:
    chosen = dict(case.options)
    chosen["weight"] = None if inputs.weight is None else inputs.weight.to(dtype or torch.float64)
    return chosen


def laid_out(tensor: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values in another memory layout: a view whose strides are not the usual."""
    if layout == "strided" and tensor.dim() == 2:
        wide = torch.full((tensor.shape[0] * 2, tensor.shape[1] * 2), math.nan, dtype=tensor.dtype)
        wide[::2, ::2] = tensor
        return wide[::2, ::2]
    if layout == "columns" and tensor.dim() == 2:
        return tensor.T.contiguous().T
    return tensor


# ---- the rule ----


def plain(case: Case, inputs: Inputs, head: bool) -> Tensors:
    """The oracle's formula in plain PyTorch at the case's dtype: the error to match."""
    dtype = case.dtype
    if head:
        tensors = [t.to(dtype).requires_grad_() for t in
                   (inputs.hidden, inputs.head_weight, inputs.head_bias)]  # fmt: skip
        logits = torch.nn.functional.linear(*tensors)
        logits = logits.movedim(-1, 1) if logits.dim() > 2 else logits
    else:
        tensors = [inputs.logits.to(dtype).requires_grad_()]
        logits = tensors[0]
    loss = _formula(logits, inputs.target.to(dtype) if case.probability else inputs.target, case,
                    inputs)  # fmt: skip
    grads = torch.autograd.grad(loss, tensors, inputs.upstream.to(loss.dtype))
    return (loss.detach(), *grads)


def _formula(
    logits: torch.Tensor, target: torch.Tensor, case: Case, inputs: Inputs
) -> torch.Tensor:
    """cross_entropy_reference's formula, computed at the logits' own dtype."""
    x = logits.movedim(1, -1).reshape(-1, case.classes) if logits.dim() > 1 else logits[None]
    options = case.options
    eps, dtype = float(options.get("label_smoothing", 0.0)), x.dtype  # type: ignore[arg-type]
    w = torch.ones(case.classes, dtype=dtype) if inputs.weight is None else inputs.weight.to(dtype)
    if case.probability:
        t = target.movedim(1, -1).reshape(-1, case.classes) if target.dim() > 1 else target[None]
        t = (1 - eps) * t + eps / case.classes
        keep = torch.ones(x.shape[0], dtype=torch.bool)
        denominator = torch.tensor(float(x.shape[0]), dtype=dtype)
    else:
        label = target.reshape(-1)
        keep = label != options.get("ignore_index", -100)
        y = torch.where(keep, label, 0)
        t = (1 - eps) * torch.nn.functional.one_hot(y, case.classes).to(dtype) + eps / case.classes
        denominator = torch.where(keep, w[y], 0.0).sum()
        x = torch.where(keep[:, None], x, 0.0)
    if options.get("softcap") is not None:
        cap = float(options["softcap"])  # type: ignore[arg-type]
        x = cap * torch.tanh(x / cap)
    lse = torch.logsumexp(x, dim=-1)
    weighted = w * t
    loss = -torch.where(weighted == 0, 0.0, weighted * (x - lse[:, None])).sum(dim=-1)
    loss = torch.where(keep, loss + float(options.get("z_loss", 0.0)) * lse**2, 0.0)  # type: ignore[arg-type]
    reduction = options.get("reduction", "mean")
    if reduction == "none":
        shape = logits.shape[:1] + logits.shape[2:] if logits.dim() > 1 else ()
        loss = loss.reshape(shape)
    elif reduction == "sum":
        loss = loss.sum()
    else:
        loss = torch.where(denominator == 0, 0.0, loss.sum() / denominator)
    return loss / math.log(float(options.get("base", math.e)))  # type: ignore[arg-type]


def oracle(case: Case, inputs: Inputs, head: bool) -> Tensors:
    """The exact loss and gradients of the inputs the backend sees (rounded to its dtype)."""

    def seen(tensor: torch.Tensor) -> torch.Tensor:
        return tensor.to(case.dtype).double()

    if head:
        tensors = [seen(t).requires_grad_() for t in
                   (inputs.hidden, inputs.head_weight, inputs.head_bias)]  # fmt: skip
        logits = torch.nn.functional.linear(*tensors)
        logits = logits.movedim(-1, 1) if logits.dim() > 2 else logits
    else:
        tensors = [seen(inputs.logits).requires_grad_()]
        logits = tensors[0]
    target = seen(inputs.target) if case.probability else inputs.target
    options = options_of(case, inputs)
    options["weight"] = None if inputs.weight is None else seen(inputs.weight)
    loss = cross_entropy_reference(logits, target, **options)  # type: ignore[arg-type]
    grads = torch.autograd.grad(loss, tensors, inputs.upstream)
    return (loss.detach(), *grads)


def assert_conforms(case: Case, got: Tensors, truth: Tensors, baseline: Tensors) -> None:
    """Each of loss and gradients: infinities where the oracle's, and elsewhere no further
    from it than plain PyTorch at the input dtype, plus :data:`TOLERANCE` units."""
    compute = torch.float64 if case.dtype == torch.float64 else torch.float32
    units = TOLERANCE * torch.finfo(compute).eps
    low = case.dtype in (torch.float16, torch.bfloat16)
    names = ["loss", *(f"gradient {k}" for k in range(len(got) - 1))]
    for name, mine, exact, theirs in zip(names, got, truth, baseline, strict=True):
        mine, exact, theirs = mine.double(), exact.double(), theirs.double()
        assert mine.shape == exact.shape, f"{name}: shape {tuple(mine.shape)}"
        finite = torch.isfinite(exact)
        assert torch.equal(mine[~finite], exact[~finite]), f"{name}: not the oracle's infinities"
        if not bool(finite.any()):
            continue
        scale = max(1.0, exact[finite].abs().max().item())
        error = (mine - exact)[finite].abs().max().item()
        plain_error = (theirs - exact)[finite].abs().nan_to_num(0.0, 0.0, 0.0).max().item()
        if low and name != "loss":  # gradients are returned in the input's dtype
            units = max(units, 2 * torch.finfo(case.dtype).eps)
        allowed = plain_error + units * scale
        assert error <= allowed, (
            f"{name}: error {error:.3g} > {allowed:.3g} (plain {plain_error:.3g})"
        )


# ---- the backends ----


@dataclass(frozen=True)
class Backend:
    """One implementation, run through the public functions: ``accepts`` says which cases it
    computes, ``module`` which implementation it exercises."""

    name: str
    module: str
    run: Callable[[Case, Inputs], Tensors]
    accepts: Callable[[Case], bool] = lambda case: True
    head: bool = False


@contextlib.contextmanager
def kernel(rows_kernel: Callable[..., torch.Tensor] | None, triton: bool = False) -> Iterator[None]:
    """The dispatch rule pinned to one rows backend (and Triton's place in the flow)."""
    with pytest.MonkeyPatch.context() as patch:
        if rows_kernel is not None:
            patch.setattr(_dispatch, "rows_kernel", lambda *a, **k: rows_kernel)
        patch.setattr(_dispatch, "uses_triton", lambda tensor: triton)
        yield


def _logits_run(
    rows_kernel, triton=False, create_graph=False, device="cpu"
) -> Callable[[Case, Inputs], Tensors]:
    """``cross_entropy`` with the dispatch rule pinned (``rows_kernel``), or as it is (None),
    on ``device``; the results back on the CPU."""

    def run(case: Case, inputs: Inputs) -> Tensors:
        x = laid_out(inputs.logits.to(case.dtype), case.layout).to(device).requires_grad_()
        target = (inputs.target.to(case.dtype) if case.probability else inputs.target).to(device)
        options = options_of(case, inputs, case.dtype)
        if options["weight"] is not None:
            options["weight"] = options["weight"].to(device)  # type: ignore[attr-defined]
        pinned = kernel(rows_kernel, triton) if device == "cpu" else contextlib.nullcontext()
        with pinned:
            loss = cross_entropy(x, target, **options)  # type: ignore[arg-type]
            upstream = inputs.upstream.to(loss.dtype).to(device)
            (grad,) = torch.autograd.grad(loss, x, upstream, create_graph=create_graph)
        return loss.detach().cpu(), grad.detach().cpu()

    return run


def _native(level: int) -> Callable[[Case, Inputs], Tensors]:
    run = _logits_run(_native_rows.loss_and_grad)

    def at_level(case: Case, inputs: Inputs) -> Tensors:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(_native_rows, "NATIVE_LEVEL", level)
            return run(case, inputs)

    return at_level


def _native_accepts(case: Case) -> bool:
    return case.dtype == torch.float32 and not case.probability and "softcap" not in case.options


def _head_run(
    low_memory: bool, tiles: object | None = None, device: str = "cpu"
) -> Callable[[Case, Inputs], Tensors]:
    """``linear_cross_entropy`` with the low-memory backend pinned (``tiles``) or as the
    dispatch rule picks it (None), on ``device``; the results back on the CPU."""

    def run(case: Case, inputs: Inputs) -> Tensors:
        tensors = [t.to(case.dtype).to(device).requires_grad_() for t in
                   (inputs.hidden, inputs.head_weight, inputs.head_bias)]  # fmt: skip
        target = (inputs.target.to(case.dtype) if case.probability else inputs.target).to(device)
        if case.probability and target.dim() > 1:
            target = target.movedim(1, -1)  # the head's probabilities: (examples..., C)
        options = options_of(case, inputs, case.dtype)
        weight = options.pop("weight")
        options["class_weight"] = None if weight is None else weight.to(device)  # type: ignore[attr-defined]
        with pytest.MonkeyPatch.context() as patch:
            if tiles is not None:
                patch.setattr(_dispatch, "head_tiles", lambda hidden: tiles)
            loss = linear_cross_entropy(
                tensors[0], tensors[1], target, bias=tensors[2], low_memory=low_memory,
                chunk_size=None if low_memory else 3, **options,  # type: ignore[arg-type]
            )  # fmt: skip
            upstream = inputs.upstream.to(loss.dtype).to(device)
            grads = torch.autograd.grad(loss, tensors, upstream)
        return (loss.detach().cpu(), *(g.cpu() for g in grads))

    return run


def _low_memory_accepts(case: Case) -> bool:
    return not case.probability and not case.weighted


def _triton_tiles() -> object:
    from crossent.torch._triton import linear_cross_entropy as tiles

    return tiles


def _triton_installed() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


INTERPRETER = _triton_installed() and os.environ.get("TRITON_INTERPRET") == "1"
CUDA = _triton_installed() and torch.cuda.is_available()


def _interpreted(case: Case) -> bool:
    """Triton's interpreter runs the kernels on CPU tensors (no GPU; conftest.py sets it)."""
    return case.dtype != torch.float64 and INTERPRETER


def _triton_available() -> bool:
    return INTERPRETER or CUDA


def _triton_rows(*args, **kwargs) -> torch.Tensor:
    from crossent.torch._triton import cross_entropy as rows

    return rows.loss_and_grad(*args, **kwargs)


BACKENDS = [
    Backend("torch ops", "_torch_ops", _logits_run(_torch_ops.loss_and_grad)),
    *(
        Backend(f"C kernel, level {level}", "_native_rows", _native(level), _native_accepts)
        for level in ([] if _native_rows._native is None else _native_rows._native.levels())
    ),
    Backend("Triton rows", "_triton/cross_entropy", _logits_run(_triton_rows, triton=True),
            _interpreted),
    Backend("double backward", "_differentiable", _logits_run(None, create_graph=True)),
    Backend("head, chunked", "_head_pass", _head_run(False), head=True),
    Backend("head, blocks of classes", "_class_blocks", _head_run(True, _class_blocks),
            _low_memory_accepts, head=True),
    Backend("head, Triton tiles", "_triton/linear_cross_entropy",
            _head_run(True, _triton_tiles()) if INTERPRETER else _head_run(True),
            lambda case: _low_memory_accepts(case) and _interpreted(case), head=True),
    # on a GPU: the public functions as they are, the dispatch rule choosing (Triton kernels)
    *(
        [
            Backend("CUDA: cross_entropy", "_triton/cross_entropy",
                    _logits_run(None, device="cuda")),
            Backend("CUDA: double backward", "_differentiable",
                    _logits_run(None, create_graph=True, device="cuda")),
            Backend("CUDA: head, chunked", "_head_pass", _head_run(False, device="cuda"),
                    head=True),
            Backend("CUDA: head, Triton tiles", "_triton/linear_cross_entropy",
                    _head_run(True, device="cuda"), _low_memory_accepts, head=True),
        ]
        if CUDA
        else []
    ),
]  # fmt: skip


def _pairs() -> list[tuple[Backend, Case]]:
    return [(b, c) for b in BACKENDS for c in CASES if b.accepts(c) and _head_fits(b, c)]


def _head_fits(backend: Backend, case: Case) -> bool:
    """The linear head's cases: every layout is its own (it takes hidden rows)."""
    return not backend.head or case.layout == "contiguous"


@pytest.mark.parametrize(
    ("backend", "case"),
    _pairs(),
    ids=[f"{b.name}: {c.name}" for b, c in _pairs()],
)
def test_every_backend_conforms_to_the_oracle(backend: Backend, case: Case) -> None:
    inputs = make_inputs(case)
    got = backend.run(case, inputs)
    assert_conforms(
        case, got, oracle(case, inputs, backend.head), plain(case, inputs, backend.head)
    )


# ---- the vocabulary-parallel losses, on P processes ----


def _split(tensor: torch.Tensor, rank: int, world: int, dim: int) -> torch.Tensor:
    """Rank ``rank``'s contiguous slice of ``dim``, the first ranks one wider when uneven."""
    size = tensor.shape[dim]
    widths = [size // world + (r < size % world) for r in range(world)]
    start = sum(widths[:rank])
    return tensor.narrow(dim, start, widths[rank])


def _vocab_parallel_cases() -> list[Case]:
    return [c for c in CASES if len(c.shape) == 2 and c.layout == "contiguous"]


def _on_every_rank(rank: int, world: int, head: bool) -> list[Tensors]:
    from crossent.torch.distributed import (
        vocab_parallel_cross_entropy,
        vocab_parallel_linear_cross_entropy,
    )

    results = []
    for case in _vocab_parallel_cases():
        inputs = make_inputs(case)
        options = options_of(case, inputs, case.dtype)
        target = inputs.target.to(case.dtype) if case.probability else inputs.target
        if case.probability:
            target = _split(target, rank, world, 1)
        if head:
            options["class_weight"] = options.pop("weight")
            hidden = inputs.hidden.to(case.dtype).requires_grad_()
            weight = _split(inputs.head_weight, rank, world, 0).to(case.dtype).requires_grad_()
            bias = _split(inputs.head_bias, rank, world, 0).to(case.dtype).requires_grad_()
            tensors: Tensors = (hidden, weight, bias)
            loss = vocab_parallel_linear_cross_entropy(hidden, weight, target, local_bias=bias,
                                                       chunk_size=3, **options)  # fmt: skip
        else:
            local = _split(inputs.logits, rank, world, 1).to(case.dtype).requires_grad_()
            tensors = (local,)
            loss = vocab_parallel_cross_entropy(local, target, **options)  # type: ignore[arg-type]
        grads = torch.autograd.grad(loss, tensors, inputs.upstream.to(loss.dtype))
        results.append((loss.detach(), *grads))
    return results


@pytest.fixture(scope="module", params=[1, 2, 3], ids=lambda p: f"P={p}")
def vocab_parallel(request) -> dict[tuple[bool, str], Tensors]:
    """Every case's loss and gradients on P processes, the ranks' slices joined."""
    from crossent.torch.distributed import launch

    world = request.param
    joined: dict[tuple[bool, str], Tensors] = {}
    for head in (False, True):
        per_rank = launch(_on_every_rank, world, args=(head,), timeout=600)
        for k, case in enumerate(_vocab_parallel_cases()):
            ranks = [results[k] for results in per_rank]
            loss = ranks[0][0]
            if head:  # ∂h is summed over the ranks already; ∂W, ∂b are slices
                grads: Tensors = (ranks[0][1], *(torch.cat([r[i] for r in ranks]) for i in (2, 3)))
            else:
                grads = (torch.cat([r[1] for r in ranks], dim=1),)
            joined[head, case.name] = (loss, *grads)
    return joined


@pytest.mark.parametrize("head", [False, True], ids=["logits", "head"])
@pytest.mark.parametrize("case", _vocab_parallel_cases(), ids=lambda c: c.name)
def test_the_vocabulary_parallel_losses_conform(vocab_parallel, head: bool, case: Case) -> None:
    inputs = make_inputs(case)
    got = vocab_parallel[head, case.name]
    assert_conforms(case, got, oracle(case, inputs, head), plain(case, inputs, head))


# ---- the configurations a GPU will run ----


@pytest.mark.skipif(not _triton_available(), reason="needs Triton")
@pytest.mark.parametrize("classes", [32_000, 128_256])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_rows_kernels_at_the_block_sizes_a_gpu_takes(classes: int, dtype: torch.dtype) -> None:
    """The rows kernels' launch plan depends on C and the dtype only: these shapes run the
    blocks of 2,048 (float32) and 4,096 (bfloat16) classes and 8 warps a GPU runs."""
    from crossent.torch._spec import LossOptions
    from crossent.torch._triton import cross_entropy as rows

    launch = rows.plan(classes, dtype, LossOptions(), False, False, True, True)
    assert dict(launch.constants)["BLOCK"] == (2048 if dtype == torch.float32 else 4096)
    assert launch.num_warps == 8
    everything = {"label_smoothing": 0.1, "z_loss": 1e-4, "softcap": 30.0, "weight": True}
    case = Case("GPU blocks", shape=(3, classes), dtype=dtype, minus_inf=True, options=everything)
    inputs = make_inputs(case)
    device = "cuda" if CUDA else "cpu"
    got = _logits_run(_triton_rows, triton=True, device=device)(case, inputs)
    assert_conforms(case, got, oracle(case, inputs, False), plain(case, inputs, False))


@pytest.mark.skipif(not _triton_available(), reason="needs Triton")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_tiles_at_the_sizes_a_gpu_takes(monkeypatch, dtype: torch.dtype) -> None:
    """The head's tiles at a GPU's sizes (the interpreter's products in float32, as
    ``UPCAST`` says), with a GPU's number of class splits."""
    tiles = _triton_tiles()
    if not CUDA:
        gpu = tiles.tiles(dtype, True, False)  # type: ignore[attr-defined]
        monkeypatch.setattr(tiles, "_tiles_for", lambda hidden: replace(gpu, UPCAST=True))
        monkeypatch.setattr(tiles, "_splits", lambda hidden, rows, blocks: min(blocks, 3))
    case = Case("GPU tiles", shape=(3, 700), dtype=dtype, options={"z_loss": 1e-3})
    inputs = make_inputs(case)
    got = _head_run(True, tiles, device="cuda" if CUDA else "cpu")(case, inputs)
    assert_conforms(case, got, oracle(case, inputs, True), plain(case, inputs, True))


# ---- the list is complete ----

_IMPLEMENTATIONS = (
    "def loss_and_grad(",
    "def gradients(",
    "def logits_gradients(",
    "def head_pass(",
)


def test_every_implementation_has_a_backend() -> None:
    """Every module of crossent.torch that computes the loss (it defines one of the
    implementation functions) is exercised by a backend here."""
    root = Path(__import__("crossent.torch").torch.__file__).parent
    implementing = {
        str(path.relative_to(root).with_suffix(""))
        for path in root.rglob("*.py")
        if any(word in path.read_text() for word in _IMPLEMENTATIONS)
    }
    covered = {backend.module for backend in BACKENDS} | {"distributed/_sharded"}
    assert implementing <= covered, f"no backend runs {sorted(implementing - covered)}"
    assert "distributed/_sharded" in implementing  # run by the vocabulary-parallel tests
