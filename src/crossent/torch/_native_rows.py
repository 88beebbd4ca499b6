"""The compiled CPU kernel's side in Python: which calls it takes, and the struct it reads.

``_native.c`` computes the common case — float32 rows of unit column stride on the CPU,
index targets, no soft-capping, one process — with the formulas of
:mod:`crossent.torch._torch_ops`, three loops over each row while it is in the core's cache.
A call describes its rows by one ``struct Rows`` (:class:`_Rows`, checked field by field
against the C struct at import), a chunk of rows per call on the thread pool (the kernel
releases the GIL).
"""

from __future__ import annotations

import ctypes
import warnings

import torch

from crossent._checks import check_index_range
from crossent.torch._pool import on_threads
from crossent.torch._spec import LossOptions

try:
    from crossent.torch import _native
except ImportError:  # built without a C compiler: the torch ops compute the same
    _native = None  # type: ignore[assignment]

NATIVE_LEVEL: int | None = None if _native is None else _native.levels()[-1]
"""The instruction-set level of the compiled kernel (0 baseline, 1 AVX2, 2 AVX-512): the best
this CPU runs; None where the kernel was not built, or to compute with torch ops instead."""
NATIVE_CHUNK_ELEMENTS = 1 << 24  # the most numbers per call of the compiled kernel
NATIVE_CALL_MIN_ELEMENTS = 1 << 16  # the fewest: less work is not worth a thread's start


class _Rows(ctypes.Structure):
    """``struct Rows`` of ``_native.c``: addresses (0 for none) and the loss's numbers."""

    _fields_ = [
        ("x", ctypes.c_void_p),  # rows × x_ld floats
        ("x_ld", ctypes.c_int64),
        ("out", ctypes.c_void_p),  # the gradient, rows × out_ld; may be x
        ("out_ld", ctypes.c_int64),
        ("y", ctypes.c_void_p),  # int64 labels
        ("rows", ctypes.c_int64),
        ("classes", ctypes.c_int64),
        ("weight", ctypes.c_void_p),  # float32 class weights
        ("total_weight", ctypes.c_double),
        ("ignore_index", ctypes.c_int64),
        ("eps", ctypes.c_double),
        ("z", ctypes.c_double),
        ("scale", ctypes.c_void_p),  # the gradient factor of row i: scale[i * scale_step]
        ("scale_step", ctypes.c_int64),
        ("factor", ctypes.c_double),  # the gradient factor of every row, without scale
        ("loss", ctypes.c_void_p),  # float32, rows
        ("lse", ctypes.c_void_p),  # float32, rows
    ]


def _ctypes_layout() -> tuple[tuple[tuple[str, int, int], ...], int]:
    fields = tuple(
        (name, getattr(_Rows, name).offset, getattr(_Rows, name).size)
        for name, *_ in _Rows._fields_
    )
    return fields, ctypes.sizeof(_Rows)


if _native is not None and _native.layout() != _ctypes_layout():
    raise ImportError(
        "crossent.torch._native was built from another struct Rows than _native_rows.py "
        f"describes: C {_native.layout()}, Python {_ctypes_layout()}; reinstall crossent"
    )


def native_available() -> bool:
    """Whether the compiled CPU kernel was built (with a C compiler at install time). Without
    it, float32 losses on the CPU are computed by torch ops: the same numbers, about 3× slower.

    >>> isinstance(native_available(), bool)
    True
    """
    return _native is not None


def runs(
    logits: torch.Tensor, target: torch.Tensor, options: LossOptions, grad: torch.Tensor | None
) -> bool:
    """Whether the compiled kernel computes this: float32 rows of unit column stride on the
    CPU, index targets, no soft-capping, and a gradient (if any) whose rows do not overlap.
    Where the kernel would but was not built, warns once that torch ops compute it, slower."""
    suited = _suited(logits, target, options, grad)
    if suited and not native_available():
        _warn_without_kernel()
    return suited and NATIVE_LEVEL is not None


_warned_without_kernel = False


def _warn_without_kernel() -> None:
    """One warning per process that the compiled kernel is missing."""
    global _warned_without_kernel
    if not _warned_without_kernel:
        _warned_without_kernel = True
        warnings.warn(
            "crossent.torch's compiled CPU kernel is not in this install (it is built where a "
            "C compiler is found when crossent is installed), so float32 CPU losses run on "
            "torch ops: the same numbers, about 3x slower. crossent.torch.native_available() "
            "tells whether the kernel is there.",
            UserWarning,
            stacklevel=2,
        )


def _suited(
    logits: torch.Tensor, target: torch.Tensor, options: LossOptions, grad: torch.Tensor | None
) -> bool:
    return (
        logits.device.type == "cpu"
        and logits.dtype == torch.float32
        and (logits.shape[1] <= 1 or logits.stride(1) == 1)
        and not target.is_floating_point()
        and options.softcap is None
        and (grad is None or _separate_rows(grad))
    )


def _separate_rows(grad: torch.Tensor) -> bool:
    """A float32 gradient whose rows do not overlap (an expanded tensor's may: the C kernel
    would read what it wrote, from several threads)."""
    classes = grad.shape[1]
    return (
        grad.dtype == torch.float32
        and (classes <= 1 or grad.stride(1) == 1)
        and grad.stride(0) >= classes
    )


def loss_and_grad(
    logits: torch.Tensor,
    target: torch.Tensor,
    options: LossOptions,
    grad_scale: torch.Tensor | float | None,
    grad: torch.Tensor | None,
    lse: torch.Tensor | None = None,
    *,
    known_lse: torch.Tensor | None = None,
) -> torch.Tensor:
    """:func:`crossent.torch._torch_ops.loss_and_grad` by the compiled kernel (where
    :func:`runs` says it may): float32 losses, a chunk of rows per call on the thread pool
    (one call, where there is little work, on this thread). ``grad_scale`` may also be a
    number. ``known_lse`` is not used (the kernel's row is in cache for its log-sum-exp)."""
    assert _native is not None
    rows, classes = logits.shape
    labels = target if target.dtype == torch.int64 else target.to(torch.int64)
    labels = labels.contiguous()
    if labels.shape != (rows,):  # the kernel reads one label per row
        raise ValueError(f"one label per row of logits {tuple(logits.shape)}; got {labels.shape}")
    weight = None if options.weight is None else options.weight.to(torch.float32).contiguous()
    factor, scale = _factor(grad_scale)
    losses = torch.empty(rows, dtype=torch.float32)
    direct = lse is not None and lse.dtype == torch.float32 and lse.is_contiguous()
    row_lse = lse if direct else None if lse is None else torch.empty(rows, dtype=torch.float32)
    step = _native_rows_per_call(rows, classes)
    x_ld, out_ld, scale_step = _row_stride(logits), _row_stride(grad), _row_stride(scale)
    fixed = {
        "x_ld": x_ld, "out_ld": out_ld, "classes": classes, "weight": _address(weight),
        "total_weight": _total(weight, classes), "ignore_index": options.ignore_index,
        "eps": options.label_smoothing, "z": options.z_loss, "scale_step": scale_step,
        "factor": factor,
    }  # fmt: skip
    # each tensor's address, and bytes from one row to the next
    x, out, y = _address(logits), _address(grad), _address(labels)
    factors, loss, lses = _address(scale), _address(losses), _address(row_lse)
    x_row, out_row, factor_row = 4 * x_ld, 4 * out_ld, 4 * scale_step
    level = NATIVE_LEVEL
    assert level is not None

    def run(start: int) -> int:
        call = _Rows(
            x=x + start * x_row, out=out and out + start * out_row, y=y + 8 * start,
            rows=min(rows, start + step) - start, scale=factors and factors + start * factor_row,
            loss=loss + 4 * start, lse=lses and lses + 4 * start, **fixed,
        )  # fmt: skip
        return int(_native.index_rows(ctypes.addressof(call), level))

    starts = range(0, rows, step)
    bad = [run(0)] if len(starts) == 1 else on_threads(run, starts, logits.device)
    if any(row >= 0 for row in bad):
        check_index_range("target", labels, classes, options.ignore_index)  # raises
    if lse is not None and row_lse is not None and not direct:
        lse.copy_(row_lse)
    return losses


def _factor(grad_scale: torch.Tensor | float | None) -> tuple[float, torch.Tensor | None]:
    """The gradient's factor as the kernel takes it: one number for every row (a number or a
    0-d tensor, read here: the kernel runs on the CPU), or float32 factors, one per row."""
    if grad_scale is None:
        return 1.0, None
    if isinstance(grad_scale, float | int):
        return float(grad_scale), None
    if grad_scale.dim() == 0:
        return float(grad_scale), None
    return 1.0, grad_scale.to(torch.float32).contiguous()


def _total(weight: torch.Tensor | None, classes: int) -> float:
    """W = Σ_j w_j, C without class weights."""
    return float(classes) if weight is None else float(weight.sum())


def _address(tensor: torch.Tensor | None) -> int:
    """The address of ``tensor``'s first element; 0 for no tensor."""
    return 0 if tensor is None else tensor.data_ptr()


def _native_rows_per_call(rows: int, classes: int) -> int:
    """Rows per call of the compiled kernel: four calls per thread, so that the threads
    finish together, of at most :data:`NATIVE_CHUNK_ELEMENTS` numbers and, where there is
    little work, fewer calls of at least :data:`NATIVE_CALL_MIN_ELEMENTS`. Larger calls are
    faster: each call's first row is read before any arithmetic, the others while the row
    before them is computed (docs/benchmarks.md, "the CPU loss")."""
    work = rows * max(classes, 1)
    calls = max(1, min(4 * torch.get_num_threads(), work // NATIVE_CALL_MIN_ELEMENTS))
    return max(1, min(NATIVE_CHUNK_ELEMENTS // max(classes, 1), -(-rows // calls)))


def _row_stride(tensor: torch.Tensor | None) -> int:
    """Elements from one row to the next; 0 for a 0-d tensor (one number for all rows)."""
    return 0 if tensor is None or tensor.dim() == 0 else tensor.stride(0)
