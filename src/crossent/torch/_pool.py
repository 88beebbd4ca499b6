"""The CPU backends' threads: one pool for the process, each torch op single-threaded on it.

Threads rather than torch's own parallelism: OpenMP's barrier after every op costs 10× when
another process holds a core (torch ops and the compiled kernel release the GIL, so threads
overlap). A single item runs on one thread too: even a 32 × 10 softmax waited milliseconds at
OpenMP's barrier while another process was busy.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


def on_threads(
    work: Callable[[_Item], _Result], items: Sequence[_Item], device: torch.device
) -> list[_Result]:
    """``[work(item) for item in items]`` without autograd; on the CPU one item per thread of
    the pool, each torch op single-threaded."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        with torch.no_grad():
            return [work(item) for item in items]
    torch.set_num_threads(1)
    try:
        if len(items) == 1:
            with torch.no_grad():
                return [work(items[0])]
        return list(_pool(threads).map(_without_grad(work), items))
    finally:
        torch.set_num_threads(threads)


class _Pool:
    """The process's one thread pool, made on first use: starting threads for every call
    cost milliseconds, more than a small loss takes."""

    lock = threading.Lock()
    executor: ThreadPoolExecutor | None = None
    workers = 0


def _pool(threads: int) -> ThreadPoolExecutor:
    """The pool, with ``threads`` workers (made again when that number changes)."""
    with _Pool.lock:
        if _Pool.executor is None or _Pool.workers != threads:
            if _Pool.executor is not None:
                _Pool.executor.shutdown(wait=False)
            _Pool.executor = ThreadPoolExecutor(threads, thread_name_prefix="crossent")
            _Pool.workers = threads
        return _Pool.executor


def _forget_pool() -> None:
    """In a forked child: the parent's pool threads do not exist there."""
    _Pool.lock = threading.Lock()
    _Pool.executor, _Pool.workers = None, 0


os.register_at_fork(after_in_child=_forget_pool)


def _without_grad(work: Callable[[_Item], _Result]) -> Callable[[_Item], _Result]:
    """``work`` with autograd off: grad mode is per thread, and a pool's threads must not
    record a graph."""

    def run(item: _Item) -> _Result:
        with torch.no_grad():
            return work(item)

    return run
