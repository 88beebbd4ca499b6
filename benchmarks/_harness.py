"""What the loss benchmarks share: one process per provider, the timing loop, peak memory.

Used by bench_cross_entropy.py and bench_linear_cross_entropy.py.

Processes
    The parent script runs each provider with ``run_isolated``: the same script again with
    ``--one PROVIDER`` and the caller's options, in a fresh interpreter. The child measures and
    prints one JSON line (``emit``), the last line of its stdout, which the parent reads back.
    So one provider's allocations, compiled code and allocator caches never touch another's
    memory figure, and a provider that crashes or is not installed costs only its own row.

Time
    ``time_calls`` calls ``prepare`` (untimed: fresh leaf tensors), then ``call`` under
    ``time.perf_counter``, with a device synchronisation before and after on CUDA; ``warmup``
    calls first (torch.compile compiles there), then ``repeat`` timed ones. ``percentiles``
    gives the median and the 20th and 80th percentiles.

Memory
    ``PeakMemory`` covers the timed calls, so what the warm-up left for good (compiled code,
    library pages loaded on first use) is in its baseline and what one call allocates and frees
    again is not. On entry it frees what can be freed (garbage collection; on Linux
    ``malloc_trim``, so freed heap goes back to the kernel), takes the memory held then as the
    baseline (less the gradient buffer crossent keeps for its next call on the CPU, which the
    timed calls use: so their gradient counts, as a fresh one would), and resets the peak. On
    exit ``extra_bytes`` is the peak since then minus that baseline. CPU: resident set size,
    the peak (VmHWM) reset through /proc/self/clear_refs; where that is refused, the process's
    lifetime maximum (ru_maxrss) serves for both, which can only understate "extra". CUDA:
    torch.cuda.memory_allocated and max_memory_allocated, so the caching allocator's reserve
    does not count.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import math
import re
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import torch

import crossent
from _load import LoadMeter
from bench_measures import cpu_model, git_commit, log

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def importable(module: str) -> bool:
    """Whether ``module`` (dotted) can be imported here, without importing it."""
    try:
        return find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def run_isolated(script: str | Path, provider: str, options: list[str]) -> dict | None:
    """Run ``script --one provider *options`` in a fresh interpreter; its JSON line, or None.

    The returned dict also has ``other_load``: the CPU time other processes on the machine
    used meanwhile, in cores (see _load.LoadMeter).
    """
    command = [sys.executable, str(script), "--one", provider, *options]
    with LoadMeter() as load:
        done = subprocess.run(command, capture_output=True, text=True, cwd=Path(script).parent)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        log(f"  {provider}: failed ({done.stderr.strip().splitlines()[-1:]})")
        return None
    return {**json.loads(lines[-1]), "other_load": round(load.cores, 2)}


def emit(result: dict) -> None:
    """The child's answer to ``run_isolated``: one JSON line on stdout."""
    print(json.dumps(result), flush=True)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@dataclass
class Timed:
    """What ``time_calls`` measured."""

    times: list[float]  # seconds of each timed call
    extra_bytes: float  # peak memory during the timed calls above the memory held before them
    last: Any  # the last call's (argument, result), to check the answer
    first: float = math.nan  # seconds of the process's first call: warm-up, compilation, faults


def time_calls(
    prepare: Callable[[], Any],
    call: Callable[[Any], Any],
    device: str,
    repeat: int,
    warmup: int = 2,
) -> Timed:
    """``warmup`` calls ``call(prepare())`` (the first one timed on its own), then ``repeat``
    timed ones under ``PeakMemory``; nothing of one call is alive during the next."""
    first = math.nan
    for index in range(warmup):
        argument = prepare()
        synchronize(device)
        start = time.perf_counter()
        call(argument)
        synchronize(device)
        first = time.perf_counter() - start if index == 0 else first
        del argument  # with its gradient: the baseline below must not hold a call's memory
    times, last = [], None
    with PeakMemory(device) as memory:
        for _ in range(repeat):
            last = None  # the previous call's gradients are freed before this one
            argument = prepare()
            synchronize(device)
            start = time.perf_counter()
            result = call(argument)
            synchronize(device)
            times.append(time.perf_counter() - start)
            last = (argument, result)
    return Timed(times, memory.extra_bytes, last, first)


def percentiles(times: list[float]) -> tuple[float, float, float]:
    """Median, 20th and 80th percentile."""
    median = statistics.median(times)
    if len(times) < 2:
        return median, median, median
    low, _, _, high = statistics.quantiles(times, n=5)
    return median, low, high


class PeakMemory:
    """Peak memory above what the process held on entry (see the module's docstring)."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.extra_bytes = 0.0

    def __enter__(self) -> PeakMemory:
        gc.collect()
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._baseline = float(torch.cuda.memory_allocated())
        else:
            _trim_heap()
            self._resettable = _reset_peak_rss()
            self._baseline = _rss("VmRSS") - _kept_bytes() if self._resettable else _max_rss()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()
            peak = float(torch.cuda.max_memory_allocated())
        else:
            peak = _rss("VmHWM") if self._resettable else _max_rss()
        self.extra_bytes = peak - self._baseline


def _kept_bytes() -> float:
    """The gradient memory crossent keeps for its next call (resident: the warm-up wrote it)."""
    reuse = sys.modules.get("crossent.torch._reuse")
    return 0.0 if reuse is None else float(sum(kept.nbytes for kept in reuse._Kept.buffers))


def _trim_heap() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _reset_peak_rss() -> bool:
    """Reset the process's peak resident set size to the current one (Linux ≥ 4.0)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _rss("VmHWM") <= _rss("VmRSS") + (1 << 20)
    except OSError:
        return False


def _rss(field: str) -> float:
    status = Path("/proc/self/status").read_text()
    found = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
    if found is None:
        raise OSError(f"no {field} in /proc/self/status")
    return float(found.group(1)) * 1024


def _max_rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024.0


def about(device: str) -> dict[str, str]:
    """The columns every CSV row repeats: machine, threads, versions, commit and date."""
    return {
        "device_name": torch.cuda.get_device_name() if device == "cuda" else cpu_model(),
        "threads": str(torch.get_num_threads()),
        "torch": torch.__version__,
        "crossent": crossent.__version__,
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
    }
