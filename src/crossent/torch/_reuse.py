"""The CPU gradient's memory, kept for the next call once its tensor is freed.

torch's CPU allocator gives every large tensor back to the system when it is freed, so the
next one of the same size is fresh memory again, and its first write pays a page fault per
page while the kernel zeroes it: on a 2-core VM, writing a fresh 524 MB gradient took 73 ms,
against 29 ms for one already mapped, and the whole loss pass about 50 ms. In training the
loss's gradient is freed every step and asked for again at the next, so one buffer is kept:
what :func:`empty` hands out is a view of it while no tensor uses it, and the peak memory is
unchanged (the gradient needs the memory during the call anyway). :func:`empty_cache` gives
it back.

A buffer is known to be unused when only this module refers to it: every NumPy view of it
and every tensor made from one hold a reference to it until they are freed.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import torch

MIN_BYTES = 16 << 20  # smaller buffers are cheap to fault in, and malloc reuses them anyway
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


class _Kept:
    """The one buffer kept (bytes), and the lock that makes finding it unused and handing
    it out one step."""

    lock = threading.Lock()
    buffer: np.ndarray | None = None


def empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised CPU tensor: the kept buffer's memory if it is unused and large
    enough, else new memory from NumPy (which asks for huge pages: 250 page faults for
    500 MB, not 130,000), kept in turn if it is at least :data:`MIN_BYTES`."""
    if dtype not in _NUMPY:
        return torch.empty(shape, dtype=dtype)
    numpy_dtype = np.dtype(_NUMPY[dtype])
    size = numpy_dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    with _Kept.lock:
        kept = _Kept.buffer if size <= _free_bytes() else None
        if kept is None:
            kept = np.empty(size, dtype=np.uint8)
            if size >= MIN_BYTES:
                _Kept.buffer = kept
        return torch.from_numpy(kept[:size].view(numpy_dtype).reshape(shape))


def _free_bytes() -> int:
    """The kept buffer's size if nothing but this module refers to it, else 0 (under the lock).

    ``sys.getrefcount`` counts the class attribute and its own argument: 2 when unused.
    """
    if _Kept.buffer is None or sys.getrefcount(_Kept.buffer) > 2:
        return 0
    return int(_Kept.buffer.nbytes)


def empty_cache() -> None:
    """Give the kept gradient buffer back to the system (once no tensor uses it).

    >>> empty_cache()
    """
    with _Kept.lock:
        _Kept.buffer = None
