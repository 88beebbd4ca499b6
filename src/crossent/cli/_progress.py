"""Progress bars of work counted as it goes: the bytes of a file read, the tokens of a text
scored or coded. rich is imported when a bar is made, not when a command's parser is."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console


@contextmanager
def file_progress(console: Console, description: str) -> Iterator[Callable[[int, int], None]]:
    """Yield ``on_bytes(done, total)`` that moves a bar of bytes read."""
    from rich.progress import DownloadColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with _bar(console, description, columns) as on_bytes:
        yield on_bytes


@contextmanager
def token_progress(console: Console, description: str) -> Iterator[Callable[[int, int], None]]:
    """Yield ``on_tokens(done, total)`` that moves a bar of tokens done."""
    from rich.progress import MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    columns = (
        MofNCompleteColumn(),
        TextColumn("tokens"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with _bar(console, description, columns) as on_tokens:
        yield on_tokens


@contextmanager
def _bar(
    console: Console, description: str, columns: tuple[Any, ...]
) -> Iterator[Callable[[int, int], None]]:
    """A transient bar: the description, the bar, then ``columns``; yields ``on(done, total)``."""
    from rich.progress import BarColumn, Progress, TextColumn

    progress = Progress(
        TextColumn("{task.description}"), BarColumn(), *columns, console=console, transient=True
    )
    task = progress.add_task(description, total=None)
    with progress:
        yield lambda done, total: progress.update(task, completed=done, total=total)
