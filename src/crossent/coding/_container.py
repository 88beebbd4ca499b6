"""The container of crossent's coded files, compressed labels and compressed text alike.

    MAGIC (8 bytes) | header length (u32, little-endian) | header (JSON) | payload (u32 words,
    little-endian: the range coder's output) | SHA-256 of everything before it (32 bytes)

Each format has its own magic bytes, version and header fields; this module writes the
container and reads it back checked: the checksum, the lengths, the header's JSON and version,
then the format's own rules, each failure a ValueError that names the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from crossent._files import atomic_path

CHECKSUM = 32  # bytes of SHA-256
_HEX64 = frozenset("0123456789abcdef")

HeaderProblem = Callable[[dict[str, Any]], "str | None"]
"""What is wrong with a header of the current version, as the end of "FILE is damaged: ...",
or None."""


def write(path: Path, magic: bytes, header: dict[str, Any], words: np.ndarray) -> int:
    """Write the file through a temporary name; return its size in bytes."""
    encoded = json.dumps(header, sort_keys=True).encode()
    body = magic + struct.pack("<I", len(encoded)) + encoded + words.astype("<u4").tobytes()
    data = body + hashlib.sha256(body).digest()
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return len(data)


def recognise(path: Path, magic: bytes, kind: str) -> str | None:
    """None if ``path`` starts with ``magic`` (a ``kind`` file, which ``--force`` may
    replace), else why not."""
    with path.open("rb") as file:
        start = file.read(len(magic))
    return None if start == magic else f"is not a crossent {kind} file"


def read(
    path: str | os.PathLike[str], magic: bytes, kind: str, version: int, problem: HeaderProblem
) -> tuple[dict[str, Any], np.ndarray]:
    """The header and payload words of a ``kind`` file, after checking its checksum, its
    lengths, its ``version`` and every field of its header (``problem``)."""
    data = Path(path).read_bytes()
    name = repr(os.fspath(path))
    if not data.startswith(magic):
        raise ValueError(f"{name} is not a crossent {kind} file (wrong magic bytes)")
    body, checksum = data[:-CHECKSUM], data[-CHECKSUM:]
    if len(data) < len(magic) + 4 + CHECKSUM or hashlib.sha256(body).digest() != checksum:
        raise ValueError(f"{name} is damaged: its SHA-256 checksum does not match its content")
    (length,) = struct.unpack_from("<I", body, len(magic))
    start = len(magic) + 4
    if start + length > len(body):
        raise ValueError(f"{name} is damaged: its header runs past the end of the file")
    header = _parse_header(body[start : start + length], name, version, problem)
    payload = body[start + length :]
    if len(payload) != 4 * header["payload_words"]:
        raise ValueError(
            f"{name} is damaged: {len(payload)} bytes of payload, header says "
            f"{header['payload_words']} words"
        )
    return header, np.frombuffer(payload, dtype="<u4").astype(np.uint32)


def _parse_header(text: bytes, name: str, version: int, problem: HeaderProblem) -> dict[str, Any]:
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{name} is damaged: its header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError(f"{name} is damaged: its header is not a JSON object")
    found = header.get("format_version")
    if found != version or isinstance(found, bool):
        raise ValueError(
            f"{name} has format version {found!r}; this crossent reads version {version}"
        )
    wrong = problem(header)
    if wrong is not None:
        raise ValueError(f"{name} is damaged: {wrong}")
    return header


def field_problem(
    header: dict[str, Any], rules: list[tuple[str, Callable[[Any], bool], str]]
) -> str | None:
    """The first of ``rules`` (field, test, what it must be) that ``header`` breaks, or None."""
    for key, ok, rule in rules:
        if key not in header:
            return f"its header's field {key!r} is missing"
        if not ok(header[key]):
            return f"its header's field {key!r} {rule}; got {header[key]!r:.40}"
    return None


def whole(value: Any, low: int, high: int | None = None) -> bool:
    """``value`` is an int (not a bool) in [low, high]."""
    return (
        isinstance(value, int)
        and not isinstance(value, bool)
        and value >= low
        and (high is None or value <= high)
    )


def sha256_hex(value: Any) -> bool:
    """``value`` is a SHA-256 written as 64 lower-case hex digits."""
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX64
