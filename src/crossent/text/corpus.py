"""The text a byte model is trained on: files and folders, split into training and held-out.

A folder stands for every file under it whose name matches ``include`` (sorted by path, so
the order and the split do not depend on the file system); files there that are not UTF-8
text (binary files, other encodings) are skipped and counted. A file named on its own must be
text. Files are joined as they are, with nothing between them.
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from pathlib import Path

from crossent.text.source import Text, read_text


@dataclass(frozen=True)
class Corpus:
    """Training and held-out bytes, the files each came from, and the files skipped."""

    train: bytes
    held_out: bytes
    train_files: list[Path]
    held_out_files: list[Path]
    skipped: list[Path]


Named = tuple[Path, Text]


def gather(paths: list[Path], include: str) -> tuple[list[Named], list[Path]]:
    """The texts of ``paths`` (files, and files under folders matching ``include``) with
    their paths, and the files under folders skipped for not being UTF-8 text."""
    texts: list[Named] = []
    skipped: list[Path] = []
    for path in paths:
        if not path.is_dir():
            texts.append((path, read_text(path)))
            continue
        for file in _files_under(path, include):
            try:
                texts.append((file, read_text(file)))
            except ValueError:
                skipped.append(file)
    if not texts:
        names = ", ".join(repr(str(p)) for p in paths)
        raise ValueError(f"no text to train on: {names} holds no UTF-8 file matching {include!r}")
    return texts, skipped


def _files_under(folder: Path, include: str) -> list[Path]:
    found: list[Path] = []
    for root, folders, files in os.walk(folder):
        folders.sort()
        found.extend(Path(root, f) for f in files if fnmatch.fnmatch(f, include))
    return sorted(found, key=lambda p: p.relative_to(folder).as_posix())


def split(texts: list[Named], held_out: float, held_out_text: Named | None = None) -> Corpus:
    """Hold out every k-th text, k = round(1 / ``held_out``) (the last 1/k of the bytes if there
    is one text), or, given ``held_out_text``, train on all and hold that out.

    >>> texts = [(Path(str(i)), Text.of(bytes([65 + i]) * 10, str(i))) for i in range(4)]
    >>> c = split(texts, 0.5)
    >>> c.train, c.held_out
    (b'AAAAAAAAAACCCCCCCCCC', b'BBBBBBBBBBDDDDDDDDDD')
    """
    files = [path for path, _ in texts]
    joined = b"".join(t.data for _, t in texts)
    if held_out_text is not None:
        return Corpus(joined, held_out_text[1].data, files, [held_out_text[0]], [])
    if not 0 <= held_out < 1:
        raise ValueError(f"`--held-out` must be a fraction in [0, 1); got {held_out}")
    if held_out == 0:
        return Corpus(joined, b"", files, [], [])
    every = max(2, round(1 / held_out))
    if len(texts) == 1:
        cut = len(joined) - max(1, len(joined) // every)
        return Corpus(joined[:cut], joined[cut:], files, files, [])
    chosen = [i % every == every - 1 for i in range(len(texts))]
    if not any(chosen):
        chosen[-1] = True
    train = b"".join(t.data for (_, t), h in zip(texts, chosen, strict=True) if not h)
    held = b"".join(t.data for (_, t), h in zip(texts, chosen, strict=True) if h)
    return Corpus(
        train,
        held,
        [f for f, h in zip(files, chosen, strict=True) if not h],
        [f for f, h in zip(files, chosen, strict=True) if h],
        [],
    )
