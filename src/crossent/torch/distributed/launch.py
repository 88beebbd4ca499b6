"""Run a function on several local processes joined by torch.distributed, safely.

:func:`launch` starts ``processes`` workers, joins them into one process group (gloo by
default, through a TCP store that this process serves on a free port of 127.0.0.1), runs
``fn(rank, world, *args)`` in each and returns what each returned. A rank that raises, dies,
makes no progress for ``stall_timeout`` seconds, or outlives ``timeout`` stops all of them,
and :class:`WorkerError` names the rank and what happened; the parent never waits for ever.
Workers can :func:`report` messages (progress, say) that the parent hands to ``on_message``
while it waits, and show that they make progress with :func:`beat`.

Workers die with the parent, whatever ends it (SIGKILL included): each watches a pipe whose
other end only the parent holds, and kills itself when the pipe closes. Messages travel on
pipes too, not on a ``multiprocessing.Queue``, whose semaphore would be a file in /dev/shm.
docs/distributed.md says why this is not torch's elastic agent (``torchrun``'s engine).

Workers start from a fork server that has imported torch once, so starting four of them
takes about 0.1 s instead of 3 s for fresh interpreters (``spawn`` where fork servers do not
exist). ``fn`` and ``args`` travel by pickle, so each worker has its own copy of every
tensor; ``fn`` must be importable by name.
"""

from __future__ import annotations

import contextlib
import datetime
import math
import multiprocessing
import os
import pickle
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.context import BaseContext
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed import TCPStore  # type: ignore[attr-defined]

COLLECTIVE_TIMEOUT = 300.0  # seconds a rank waits on the others in any one collective
_PRELOAD = ["crossent.torch.distributed"]  # with torch and torch._dynamo: 2.4 s, once
_BEAT_EVERY = 0.25  # seconds: a worker sends at most 4 beats a second
_GRACE = 1.0  # seconds to collect the other ranks' errors after the first failure
_worker: _Worker | None = None  # in a worker: its rank and its pipe to the parent


class WorkerError(RuntimeError):
    """A worker process failed, died or hung.

    The first line of the message, ``summary``, names the rank and what happened; the lines
    after it hold every rank's error with its traceback. ``reason`` is the error of the rank
    named (its exception's message), and ``user_error`` is True when that was a ValueError or
    TypeError: bad input or settings rather than a fault of the system.

    Args:
        summary: one line: the rank and what happened to it.
        details: every rank's error with its traceback, after the first line.
        rank: the rank named, or None when no single rank is to blame.
        reason: the named rank's own error message (default: ``summary``).
        user_error: whether that error was the user's (a ValueError or TypeError).

    >>> error = WorkerError("rank 1 exited with code 3", rank=1)
    >>> error.rank, error.user_error, str(error)
    (1, False, 'rank 1 exited with code 3')
    """

    def __init__(
        self,
        summary: str,
        details: str = "",
        *,
        rank: int | None = None,
        reason: str = "",
        user_error: bool = False,
    ) -> None:
        super().__init__(summary + (f"\n{details}" if details else ""))
        self.summary = summary
        self.rank = rank
        self.reason = reason or summary
        self.user_error = user_error


def launch(
    fn: Callable[..., Any],
    processes: int,
    *,
    args: tuple[Any, ...] = (),
    timeout: float | None = None,
    collective_timeout: float = COLLECTIVE_TIMEOUT,
    stall_timeout: float | None = None,
    backend: str = "gloo",
    threads: int | None = None,
    on_message: Callable[[int, Any], None] | None = None,
) -> list[Any]:
    """``[fn(0, world, *args), ..., fn(world − 1, world, *args)]``, each run in its own process.

    The processes join one process group (``backend``), so ``fn`` may call the collectives of
    ``torch.distributed`` and crossent's vocabulary-parallel losses; they die with the parent.

    Args:
        fn: a module-level function ``fn(rank, world, *args)``; its result must pickle.
        processes: the world size, ≥ 1.
        args: more arguments of ``fn``, after the rank and the world size.
        timeout: seconds for the whole run, after which every worker is stopped and
            :class:`WorkerError` raised; None: no limit.
        collective_timeout: seconds a rank waits in one collective for the others (the
            process group's timeout), after which it fails, and so the run; at most
            ``timeout``.
        stall_timeout: seconds a rank may go without showing progress (:func:`beat`,
            :func:`report`, or its result) before it is named as hung and the run stopped;
            None: not watched. Set it only if ``fn`` beats more often than that.
        backend: the torch.distributed backend ("gloo" for CPUs, "nccl" for GPUs).
        threads: torch threads per worker; default the CPUs shared out, at least 1.
        on_message: called in the parent as ``on_message(rank, message)`` for every
            :func:`report` of a worker, in the order each worker sent them.

    Returns:
        The results of ``fn``, by rank. A rank that raises, dies or hangs raises
        :class:`WorkerError` naming it, after every worker is stopped.

    >>> launch(pow, 3, timeout=120)          # pow(rank, world) on 3 processes
    [0, 1, 8]
    """
    _check_arguments(processes, timeout, collective_timeout, stall_timeout)
    if timeout is not None:
        collective_timeout = min(collective_timeout, timeout)
    threads = threads or max(1, (os.cpu_count() or 1) // processes)
    context = _context()
    store = TCPStore("127.0.0.1", 0, None, True, wait_for_workers=False)
    # pickled here, so each worker unpickles its own copy: torch's multiprocessing pickler
    # would put tensors in shared memory, and every rank would update the same parameters
    call = pickle.dumps((fn, args))
    setting = (processes, ("127.0.0.1", store.port), backend, collective_timeout, threads, call)
    crew = _Crew.start(context, setting)
    try:
        results = _collect(crew, timeout, stall_timeout, on_message)
    finally:
        crew.stop()
        del store
    return [results[rank] for rank in range(processes)]


def report(message: Any) -> None:
    """Send ``message`` from a worker to the parent's ``on_message``; a no-op elsewhere.

    Args:
        message: anything that pickles: a progress line, a dict of numbers.

    >>> report({"epoch": 1, "loss_bits": 0.5}) is None   # outside a worker: nothing is sent
    True
    """
    if _worker is not None:
        _worker.send(("message", pickle.dumps(message)))


def beat() -> None:
    """In a worker: show the parent this rank is making progress (call it after every step);
    a no-op elsewhere. Cheap enough to call often: at most 4 beats a second are sent."""
    if _worker is not None:
        _worker.beat()


# ---- in a worker ----


@dataclass
class _Worker:
    rank: int
    channel: Connection
    beats: int = 0
    sent: float = -math.inf

    def send(self, message: tuple[str, Any]) -> None:
        self.channel.send((message[0], self.rank, message[1]))

    def beat(self) -> None:
        self.beats += 1
        now = time.monotonic()
        if now - self.sent >= _BEAT_EVERY:
            self.sent = now
            self.send(("beat", self.beats))


def _work(
    rank: int,
    world: int,
    address: tuple[str, int],
    backend: str,
    timeout: float,
    threads: int,
    call: bytes,
    channel: Connection,
    lifeline: Connection,
) -> None:
    """A worker: join the group, run ``fn``, send its result or its error."""
    global _worker
    _die_with_parent(lifeline)
    _name_process(f"crossent-r{rank}")
    _worker = _Worker(rank, channel)
    torch.set_num_threads(threads)
    try:
        wait_for = datetime.timedelta(seconds=timeout)
        store = TCPStore(*address, None, False, timeout=wait_for)
        dist.init_process_group(backend, store=store, rank=rank, world_size=world, timeout=wait_for)
        fn, args = pickle.loads(call)
        # pickled here, so tensors travel as bytes, not as shared memory this process must
        # outlive, and a result that cannot be pickled is reported as this rank's error
        result = pickle.dumps(fn(rank, world, *args))
    except BaseException as error:
        _worker.send(("error", _failure(error)))
        os._exit(1)  # skip the process group's teardown, which can wait on the other ranks
    _worker.send(("result", result))
    dist.destroy_process_group()


def _die_with_parent(lifeline: Connection) -> None:
    """Kill this process when the parent's end of ``lifeline`` closes: when the parent ends,
    however it ends, or stops the workers."""

    def watch() -> None:
        with contextlib.suppress(EOFError, OSError):
            lifeline.recv()
        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="crossent-lifeline", daemon=True).start()


def _name_process(name: str) -> None:
    """Show ``name`` for this process in ps and top (Linux; at most 15 characters)."""
    with contextlib.suppress(OSError), open("/proc/self/comm", "w") as comm:
        comm.write(name)


def _failure(error: BaseException) -> tuple[str, str, bool]:
    """(the error in one line, its traceback, whether it was the user's input's fault)."""
    text = str(error).strip()
    line = f"{type(error).__name__}: {text.splitlines()[0]}" if text else type(error).__name__
    return line, traceback.format_exc(), isinstance(error, (ValueError, TypeError))


# ---- in the parent ----


@dataclass
class _Crew:
    """The workers, the parent's ends of their pipes, and what each has shown so far."""

    workers: list[Any]
    channels: dict[int, Connection]  # rank → the pipe it writes to; removed at its end
    lifelines: list[Connection]
    seen: list[float] = field(default_factory=list)  # when each rank last showed progress
    beats: list[int] = field(default_factory=list)

    @classmethod
    def start(cls, context: BaseContext, setting: tuple[Any, ...]) -> _Crew:
        """Start the workers; signals wait until all have started, so that a SIGTERM or a
        Ctrl-C meanwhile stops a whole crew, not one worker half-way through its start."""
        processes = setting[0]
        crew = cls([], {}, [])
        with _signals_held():
            try:
                for rank in range(processes):
                    crew._start_one(context, rank, setting)
            except BaseException:
                crew.stop()
                raise
        crew.seen, crew.beats = [time.monotonic()] * processes, [0] * processes
        return crew

    def _start_one(self, context: BaseContext, rank: int, setting: tuple[Any, ...]) -> None:
        reader, writer = context.Pipe(duplex=False)
        alive, lifeline = context.Pipe(duplex=False)
        self.channels[rank] = reader
        self.lifelines.append(lifeline)
        worker = context.Process(  # type: ignore[attr-defined]
            target=_work,
            args=(rank, *setting, writer, alive),
            name=f"crossent-rank-{rank}",
            daemon=True,
        )
        worker.start()
        self.workers.append(worker)
        writer.close()  # the worker's ends: the parent's copies would keep them open
        alive.close()

    def stop(self) -> None:
        """End every worker still running: each kills itself when its lifeline closes, and
        SIGKILL reaches a stopped one too."""
        for lifeline in self.lifelines:
            lifeline.close()
        for rank, worker in enumerate(self.workers):
            if self.stopped(rank):
                worker.kill()
            worker.join(timeout=2)
            if worker.is_alive():
                worker.kill()
                worker.join()
        for channel in self.channels.values():
            channel.close()

    def stopped(self, rank: int) -> bool:
        """Whether the rank's process is stopped (SIGSTOP, a debugger): Linux's /proc says."""
        try:
            with open(f"/proc/{self.workers[rank].pid}/stat") as stat:
                return stat.read().rpartition(")")[2].split()[0] in ("T", "t")
        except (OSError, IndexError):
            return False


def _collect(
    crew: _Crew,
    timeout: float | None,
    stall_timeout: float | None,
    on_message: Callable[[int, Any], None] | None,
) -> dict[int, Any]:
    """Every worker's result, passing on messages, until all are in or one fails."""
    results: dict[int, Any] = {}
    failures: dict[int, tuple[str, str, bool]] = {}  # rank → its error (_failure)
    deadline = math.inf if timeout is None else time.monotonic() + timeout
    while len(results) < len(crew.workers) and not failures:
        now = time.monotonic()
        if now >= deadline:
            missing = [rank for rank in range(len(crew.workers)) if rank not in results]
            raise WorkerError(
                f"rank{'s' if len(missing) > 1 else ''} {_ranks(missing)} had not "
                f"finished after the timeout of {timeout:g} s; all workers were stopped",
                rank=missing[0],
            )
        if stall_timeout is not None:
            _check_progress(crew, results, stall_timeout, now)
        _receive(crew, results, failures, on_message, min(0.5, deadline - now))
        if _deaths(crew, results, failures):
            break
    if failures or _deaths(crew, results, failures):
        raise _explain(crew, results, failures)
    return results


def _receive(
    crew: _Crew,
    results: dict[int, Any],
    failures: dict[int, tuple[str, str, bool]],
    on_message: Callable[[int, Any], None] | None,
    seconds: float,
) -> None:
    """Take the messages that arrive within ``seconds``; note the pipes that closed."""
    ranks = {id(channel): rank for rank, channel in crew.channels.items()}
    for channel in wait(list(crew.channels.values()), timeout=seconds):
        rank = ranks[id(channel)]
        try:
            kind, _, payload = crew.channels[rank].recv()
        except (EOFError, OSError):
            del crew.channels[rank]  # the worker has ended
            continue
        crew.seen[rank] = time.monotonic()
        if kind == "error":
            failures[rank] = payload
        elif kind == "result":
            results[rank] = pickle.loads(payload)
        elif kind == "beat":
            crew.beats[rank] = payload
        elif on_message is not None:
            on_message(rank, pickle.loads(payload))


def _check_progress(crew: _Crew, results: dict[int, Any], limit: float, now: float) -> None:
    """Raise WorkerError if a rank has shown no progress for ``limit`` seconds.

    When one rank stops, the others soon wait for it in a collective and stop beating too,
    so the one to name is found another way: a stopped process first, else the ranks behind
    the others, else every rank that went quiet.
    """
    quiet = [
        rank for rank, seen in enumerate(crew.seen) if rank not in results and now - seen > limit
    ]
    if not quiet:
        return
    running = [rank for rank in range(len(crew.workers)) if rank not in results]
    stopped = [rank for rank in running if crew.stopped(rank)]
    behind = min(crew.beats[rank] for rank in running)
    if stopped:
        named, why = stopped, "its process is stopped" if len(stopped) == 1 else "stopped"
    elif behind < max(crew.beats[rank] for rank in running):
        named = [rank for rank in running if crew.beats[rank] == behind]
        why = f"{behind} steps done, the others more"
    else:
        named, why = quiet, "waiting, or stuck"
    s = "s" if len(named) > 1 else ""
    raise WorkerError(
        f"rank{s} {_ranks(named)} made no progress for {limit:g} s ({why}); all workers were "
        "stopped",
        rank=named[0],
    )


def _deaths(
    crew: _Crew, results: dict[int, Any], failures: dict[int, tuple[str, str, bool]]
) -> list[int]:
    """Ranks whose process ended with neither a result nor a reported error."""
    return [
        rank
        for rank, worker in enumerate(crew.workers)
        if rank not in crew.channels
        and rank not in results
        and rank not in failures
        and not _alive(worker)
    ]


def _alive(worker: Any) -> bool:
    worker.join(timeout=0.1)
    return bool(worker.is_alive())


def _explain(
    crew: _Crew, results: dict[int, Any], failures: dict[int, tuple[str, str, bool]]
) -> WorkerError:
    """Every failure after a short grace period, deaths first: when one rank dies, the others
    fail a moment later with broken connections, which are consequences, not causes."""
    end = time.monotonic() + _GRACE
    while crew.channels and (left := end - time.monotonic()) > 0:
        _receive(crew, results, failures, None, left)
    deaths = [(rank, _death(rank, crew.workers[rank])) for rank in _deaths(crew, results, failures)]
    errors = [(rank, f"rank {rank} failed: {line}") for rank, (line, _, _) in failures.items()]
    details = [text for _, text in deaths] + [
        f"rank {rank} failed:\n{trace}" for rank, (_, trace, _) in failures.items()
    ]
    rank, summary = (deaths + errors)[0]
    failure = failures.get(rank)
    return WorkerError(
        summary,
        "\n".join(details),
        rank=rank,
        reason=failure[0].partition(": ")[2] if failure and not deaths else "",
        user_error=bool(failure and not deaths and failure[2]),
    )


def _death(rank: int, worker: Any) -> str:
    """How a rank's process ended: killed by a signal (named), or its exit code."""
    code = worker.exitcode
    if code is not None and code < 0:
        how = f"was killed by {signal.Signals(-code).name}"
    else:
        how = f"exited with code {code}"
    return f"rank {rank} {how} before returning a result"


def _ranks(ranks: list[int]) -> str:
    return ", ".join(map(str, ranks))


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Defer SIGINT, SIGTERM and SIGHUP to the end of the block (in the main thread): each is
    raised again there, for its own handler. (Not by blocking them: a process started in the
    block, the fork server, would inherit the blocked mask.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    names = ("SIGINT", "SIGTERM", "SIGHUP")
    numbers = [getattr(signal, name) for name in names if hasattr(signal, name)]
    previous = {number: signal.signal(number, lambda n, _: caught.append(n)) for number in numbers}
    try:
        yield
    finally:
        for number, handler in previous.items():
            if handler is not None:
                signal.signal(number, handler)
        for deferred in dict.fromkeys(caught):
            signal.raise_signal(deferred)


def _check_arguments(
    processes: int,
    timeout: float | None,
    collective_timeout: float,
    stall_timeout: float | None,
) -> None:
    if isinstance(processes, bool) or not isinstance(processes, int) or processes < 1:
        raise ValueError(f"`processes` must be a whole number ≥ 1; got {processes!r}")
    for name, seconds in (
        ("timeout", timeout),
        ("collective_timeout", collective_timeout),
        ("stall_timeout", stall_timeout),
    ):
        if seconds is not None and not seconds > 0:
            raise ValueError(f"`{name}` must be a number of seconds > 0; got {seconds!r}")


def _context() -> BaseContext:
    if "forkserver" in multiprocessing.get_all_start_methods():
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(_PRELOAD)
        return context
    return multiprocessing.get_context("spawn")
