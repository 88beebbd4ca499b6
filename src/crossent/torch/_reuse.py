"""The CPU gradient's memory, kept for the next call once its tensor is freed.

torch's CPU allocator gives every large tensor back to the system when it is freed, so the
next one of the same size is fresh memory again, and its first write pays a page fault per
page while the kernel zeroes it: writing a fresh gradient takes over twice as long as writing
one already mapped, more than the whole loss pass (docs/benchmarks.md, the CPU loss). In
training the loss's gradient is freed every step and asked for again at the next, so the last
:data:`KEPT` large buffers are kept, and :func:`empty` hands out a view of one while no
tensor uses it and it is no more than twice the size asked for. Before new memory is taken,
kept buffers too small to serve are given back, so what is kept never adds to the peak of a
call that needs more. :func:`empty_cache` gives everything back.

A buffer is unused when only this module refers to it: every NumPy view of it and every tensor
made from one hold a reference to it until they are freed. That count is exact on CPython with
its global interpreter lock; elsewhere nothing is kept.
"""

from __future__ import annotations

import math
import sys
import threading
from typing import ClassVar

import numpy as np
import torch

MIN_BYTES = 16 << 20  # smaller buffers are cheap to fault in, and malloc reuses them anyway
KEPT = 2  # a step may have two large losses
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


class _Kept:
    """The buffers kept (bytes, newest first), and the lock that makes finding one unused
    and handing it out one step."""

    lock = threading.Lock()
    buffers: ClassVar[list[np.ndarray]] = []


def _references(index: int) -> int:
    """References to kept buffer ``index``, as ``sys.getrefcount`` counts them here."""
    return sys.getrefcount(_Kept.buffers[index])


def _unused_count() -> int:
    """What :func:`_references` gives for a buffer nothing else refers to, measured once
    through the same code (interpreters differ in the references they count)."""
    _Kept.buffers.insert(0, np.empty(0, dtype=np.uint8))
    try:
        return _references(0)
    finally:
        del _Kept.buffers[0]


_UNUSED = _unused_count()
_EXACT = sys.implementation.name == "cpython" and getattr(sys, "_is_gil_enabled", lambda: True)()


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor: a kept buffer's memory if one is unused and fits, else new
    memory from NumPy (which asks for huge pages: 250 page faults for 500 MB, not 130,000),
    kept in turn if it is at least :data:`MIN_BYTES`."""
    if dtype not in _NUMPY:
        return torch.empty(shape, dtype=dtype)
    numpy_dtype = np.dtype(_NUMPY[dtype])
    size = numpy_dtype.itemsize * math.prod(shape)
    if size < MIN_BYTES:  # malloc reuses small blocks: torch's own allocation is the cheapest
        return torch.empty(shape, dtype=dtype)
    if not _EXACT:
        return torch.from_numpy(np.empty(shape, dtype=numpy_dtype))
    with _Kept.lock:
        memory = _take(size)
        return torch.from_numpy(memory[:size].view(numpy_dtype).reshape(shape))


def _take(size: int) -> np.ndarray:
    """A kept buffer that is unused and holds ``size`` bytes with less than as many to spare;
    else new memory, kept, after the unused buffers smaller than it are given back."""
    unused = [_references(i) == _UNUSED for i in range(len(_Kept.buffers))]
    for index, free in enumerate(unused):
        if free and size <= _Kept.buffers[index].nbytes < 2 * size:
            return _Kept.buffers[index]
    _Kept.buffers = [
        buffer
        for buffer, free in zip(_Kept.buffers, unused, strict=True)
        if not (free and buffer.nbytes < size)
    ]
    fresh = np.empty(size, dtype=np.uint8)
    _Kept.buffers = [fresh, *_Kept.buffers][:KEPT]
    return fresh


def empty_cache() -> None:
    """Give the kept gradient buffers back to the system (each once no tensor uses it).

    On the CPU, the memory of a freed gradient is kept for the next loss of the same size (at
    most two gradients' worth), as PyTorch's CUDA allocator keeps its cache; this frees it.

    >>> from crossent.torch import cross_entropy
    >>> logits = torch.randn(64, 1000, requires_grad=True)
    >>> cross_entropy(logits, torch.randint(0, 1000, (64,))).backward()
    >>> del logits                 # its gradient's buffer is now kept for the next loss
    >>> empty_cache()              # and given back
    """
    with _Kept.lock:
        _Kept.buffers = []
