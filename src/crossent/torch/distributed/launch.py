"""Run a function on several local processes joined by torch.distributed, safely.

:func:`launch` starts ``processes`` workers, joins them into one process group (gloo by
default, through a file store in a temporary folder, so no port has to be free), runs
``fn(rank, world, *args)`` in each and returns what each returned. A rank that raises, dies
or outlives ``timeout`` stops all of them and raises :class:`WorkerError` naming the rank and
what happened, with the worker's traceback; the parent never waits for ever. Workers can
:func:`report` messages (progress, say) that the parent hands to ``on_message`` while it waits.

Workers start from a fork server that has imported torch once, so starting four of them
takes about 0.1 s instead of 3 s for fresh interpreters (``spawn`` where fork servers do not
exist). ``fn`` and ``args`` travel by pickle, so each worker has its own copy of every
tensor; ``fn`` must be importable by name.
"""

from __future__ import annotations

import datetime
import math
import multiprocessing
import os
import pickle
import queue
import tempfile
import time
import traceback
from collections.abc import Callable
from multiprocessing.context import BaseContext
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

COLLECTIVE_TIMEOUT = 300.0  # seconds a rank waits on the others in any one collective
_PRELOAD = ["crossent.torch.distributed"]  # with torch and torch._dynamo: 2.4 s, once
_worker_queue: Any = None  # the parent's queue, in a worker
_worker_rank = -1


class WorkerError(RuntimeError):
    """A worker process failed, died or hung; the message names the rank."""


def launch(
    fn: Callable[..., Any],
    processes: int,
    *,
    args: tuple[Any, ...] = (),
    timeout: float | None = None,
    collective_timeout: float = COLLECTIVE_TIMEOUT,
    backend: str = "gloo",
    threads: int | None = None,
    on_message: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """``[fn(0, world, *args), ..., fn(world − 1, world, *args)]``, each run in its own process.

    Args:
        fn: a module-level function ``fn(rank, world, *args)``; its result must pickle.
        processes: the world size, ≥ 1.
        timeout: seconds for the whole run, after which every worker is stopped and
            :class:`WorkerError` raised; None: no limit.
        collective_timeout: seconds a rank waits in one collective for the others (the
            process group's timeout), after which it fails, and so the run; at most
            ``timeout``.
        backend: the torch.distributed backend ("gloo" for CPUs, "nccl" for GPUs).
        threads: torch threads per worker; default the CPUs shared out, at least 1.
        on_message: called in the parent as ``on_message(rank, message)`` for every
            :func:`report` of a worker, in the order each worker sent them.
    """
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"`processes` must be a whole number ≥ 1; got {processes!r}")
    for name, seconds in (("timeout", timeout), ("collective_timeout", collective_timeout)):
        if seconds is not None and not seconds > 0:
            raise ValueError(f"`{name}` must be a number of seconds > 0; got {seconds!r}")
    if timeout is not None:
        collective_timeout = min(collective_timeout, timeout)
    threads = threads or max(1, (os.cpu_count() or 1) // processes)
    context = _context()
    messages = context.Queue()
    # pickled here, so each worker unpickles its own copy: torch's multiprocessing pickler
    # would put tensors in shared memory, and every rank would update the same parameters
    call = pickle.dumps((fn, args))
    with tempfile.TemporaryDirectory(prefix="crossent-store-") as folder:
        store = str(Path(folder) / "store")
        workers = [
            context.Process(  # type: ignore[attr-defined]
                target=_work,
                args=(rank, processes, store, backend, collective_timeout, threads, call, messages),
                name=f"crossent-rank-{rank}",
                daemon=True,
            )
            for rank in range(processes)
        ]
        for worker in workers:
            worker.start()
        try:
            results = _collect(workers, messages, timeout, on_message)
        finally:
            _stop(workers)
    return [results[rank] for rank in range(processes)]


def report(message: Any) -> None:
    """Send ``message`` from a worker to the parent's ``on_message``; a no-op elsewhere."""
    if _worker_queue is not None:
        _worker_queue.put(("message", _worker_rank, pickle.dumps(message)))


def _context() -> BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        return context
    return multiprocessing.get_context("spawn")


def _work(
    rank: int,
    world: int,
    store: str,
    backend: str,
    timeout: float,
    threads: int,
    call: bytes,
    messages: Any,
) -> None:
    """A worker: join the group, run ``fn``, send its result or the traceback of its error."""
    global _worker_queue, _worker_rank
    _worker_queue, _worker_rank = messages, rank
    torch.set_num_threads(threads)
    try:
        dist.init_process_group(
            backend,
            init_method=f"file://{store}",
            rank=rank,
            world_size=world,
            timeout=datetime.timedelta(seconds=timeout),
        )
        fn, args = pickle.loads(call)
        # pickled here, so tensors travel as bytes, not as shared memory this process must
        # outlive, and a result that cannot be pickled is reported as this rank's error
        result = pickle.dumps(fn(rank, world, *args))
    except BaseException:
        messages.put(("error", rank, traceback.format_exc()))
        messages.close()
        messages.join_thread()  # the traceback reaches the parent before the exit code
        os._exit(1)  # skip the process group's teardown, which can wait on the other ranks
    messages.put(("result", rank, result))
    dist.destroy_process_group()


def _collect(
    workers: list[Any],
    messages: Any,
    timeout: float | None,
    on_message: Callable[[int, Any], None] | None,
) -> dict[int, Any]:
    """Every worker's result, passing on messages, until all are in or one fails."""
    results: dict[int, Any] = {}
    failures: dict[int, str] = {}  # rank → its traceback
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    while len(results) < len(workers) and not failures:
        left = deadline - time.monotonic()
        if left <= 0:
            missing = [rank for rank in range(len(workers)) if rank not in results]
            raise WorkerError(
                f"rank{'s' if len(missing) > 1 else ''} {', '.join(map(str, missing))} had not "
                f"finished after the timeout of {timeout:g} s; all workers were stopped"
            )
        try:
            _take(messages.get(timeout=min(left, 0.5)), results, failures, on_message)
        except queue.Empty:
            if _deaths(workers, results, failures):
                break
    if failures or _deaths(workers, results, failures):
        raise WorkerError(_explain(workers, messages, results, failures))
    return results


def _take(
    message: tuple[str, int, Any],
    results: dict[int, Any],
    failures: dict[int, str],
    on_message: Callable[[int, Any], None] | None,
) -> None:
    kind, rank, payload = message
    if kind == "error":
        failures[rank] = payload
    elif kind == "result":
        results[rank] = pickle.loads(payload)
    elif on_message is not None:
        on_message(rank, pickle.loads(payload))


def _deaths(workers: list[Any], results: dict[int, Any], failures: dict[int, str]) -> list[int]:
    """Ranks whose process ended with neither a result nor a reported error."""
    return [
        rank
        for rank, worker in enumerate(workers)
        if not worker.is_alive() and rank not in results and rank not in failures
    ]


def _explain(
    workers: list[Any], messages: Any, results: dict[int, Any], failures: dict[int, str]
) -> str:
    """Every failure after a short grace period, deaths first: when one rank dies, the others
    fail a moment later with broken connections, which are consequences, not causes."""
    time.sleep(1.0)
    try:  # tracebacks still in the pipe
        while True:
            _take(messages.get(timeout=0.2), results, failures, None)
    except queue.Empty:
        pass
    deaths = [
        f"rank {rank} exited with code {workers[rank].exitcode} before returning a result"
        for rank in _deaths(workers, results, failures)
    ]
    errors = [f"rank {rank} failed:\n{text}" for rank, text in failures.items()]
    return "\n".join(deaths + errors)


def _stop(workers: list[Any]) -> None:
    """End every worker still running: terminate, then kill after 5 s."""
    for worker in workers:
        if worker.is_alive():
            worker.terminate()
    for worker in workers:
        worker.join(timeout=5)
        if worker.is_alive():
            worker.kill()
            worker.join()
