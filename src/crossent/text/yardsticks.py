"""The compressors a user knows, on the same bytes: what a model's bits are measured against.

gzip -9, bzip2 -9 and xz -9 come with Python (zlib, bz2, lzma, with the containers the
command-line tools write: gzip's header without a file name, xz's CRC64 check); zstd -19 needs
the ``zstandard`` package (installed by ``crossent[text]``), and where it is missing its row
says so instead of a size.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Yardstick:
    """One compressor's output size on the text, or why there is none."""

    name: str
    compressed_bytes: int | None
    note: str = ""

    def bits_per_byte(self, text_bytes: int) -> float | None:
        if self.compressed_bytes is None:
            return None
        return 8 * self.compressed_bytes / text_bytes


def _zstd(data: bytes) -> bytes:
    import zstandard

    return bytes(zstandard.ZstdCompressor(level=19).compress(data))


_COMPRESSORS: list[tuple[str, Callable[[bytes], bytes]]] = [
    ("gzip -9", lambda data: gzip.compress(data, compresslevel=9, mtime=0)),
    ("bzip2 -9", lambda data: bz2.compress(data, compresslevel=9)),
    ("xz -9", lambda data: lzma.compress(data, format=lzma.FORMAT_XZ, preset=9)),
    ("zstd -19", _zstd),
]


def yardsticks(data: bytes) -> list[Yardstick]:
    """The size of ``data`` under each compressor.

    >>> [y.name for y in yardsticks(b"abc" * 100)]
    ['gzip -9', 'bzip2 -9', 'xz -9', 'zstd -19']
    """
    found = []
    for name, compress in _COMPRESSORS:
        try:
            found.append(Yardstick(name, len(compress(data))))
        except ModuleNotFoundError as error:
            found.append(Yardstick(name, None, f"{error.name} is not installed: pip install "
                                               "'crossent[text]'"))  # fmt: skip
    return found
