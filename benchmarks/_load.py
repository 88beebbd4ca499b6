"""How busy the rest of the machine was while a benchmark ran."""

from __future__ import annotations

import os
import time
from pathlib import Path


class LoadMeter:
    """CPU time used by other processes while a block runs, in cores (0: a quiet machine)."""

    def __enter__(self) -> LoadMeter:
        self._busy, self._own, self._wall = _busy_seconds(), _own_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        wall = time.perf_counter() - self._wall
        other = (_busy_seconds() - self._busy) - (_own_seconds() - self._own)
        self.cores = max(0.0, other / wall) if wall > 0 else 0.0


def _busy_seconds() -> float:
    """Non-idle CPU time of the whole machine (user, nice, system, irq, softirq, steal)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return 0.0
    idle, iowait = fields[3], fields[4]
    return (sum(fields) - idle - iowait) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    times = os.times()
    return times.user + times.system + times.children_user + times.children_system
