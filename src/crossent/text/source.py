"""The text a command reads: a file of UTF-8 text, checked before any model sees it.

A file is refused, with one line naming it and the rule, when it is empty, when it holds a NUL
byte (a binary file: text never does) or when its bytes are not UTF-8. The bytes are kept as
they are (no newline translation), since bits per byte count them and decompression must give
them back exactly.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Text:
    """A checked text: its bytes, the same decoded, and a name for messages (``'a.txt'``).

    >>> t = Text.of(b"caf\\xc3\\xa9", "'x'")
    >>> len(t.data), len(t.text)
    (5, 4)
    """

    data: bytes
    text: str
    name: str

    @classmethod
    def of(cls, data: bytes, name: str) -> Text:
        """Check ``data``: not empty, no NUL byte, valid UTF-8."""
        if not data:
            raise ValueError(f"{name} is empty: there is no text to read")
        nul = data.find(b"\0")
        if nul >= 0:
            raise ValueError(
                f"{name} is a binary file, not text: it holds a NUL byte at offset {nul:,}"
            )
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as error:
            byte = data[error.start]
            raise ValueError(
                f"{name} is not UTF-8 text: byte 0x{byte:02x} at offset {error.start:,} "
                f"({error.reason})"
            ) from None
        return cls(data, text, name)


def read_text(path: str | os.PathLike[str]) -> Text:
    """The checked text of the file at ``path``: its bytes, and the text they are in UTF-8.

    Args:
        path: a text file. An empty file, a binary one (a NUL byte) or bytes that are not
            UTF-8 are a ValueError naming the file and the offset; a folder or a missing file
            is an OSError.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = Path(folder.name) / "café.txt"
    >>> _ = path.write_text("café", encoding="utf-8")
    >>> text = read_text(path)
    >>> len(text.data), len(text.text)   # bits per byte count bytes, per character characters
    (5, 4)
    >>> folder.cleanup()
    """
    return Text.of(Path(path).read_bytes(), repr(os.fspath(path)))
