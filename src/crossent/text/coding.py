"""Text coded under a language model: the model's bits made into a file, and the text back.

Each token is range-coded (constriction, as :mod:`crossent.coding.labels` codes labels) with
the model's distribution for it given the tokens before it, quantised to 24-bit integer
frequencies (every token at least 1/2^24) by :func:`crossent.coding.labels.coder_frequencies`.
With N tokens of V classes and score's total of B bits (the model's own, unquantised
distributions), the payload P in bits obeys

    P ≤ B + N · (−log2(1 − V / 2^24)) + N · (−log2(1 − 2^−8)) + 64

the quantisation's cost (frequencies are at least the probability times 1 − V/2^24), the
range coder's (constriction keeps a range of at least 2^32 and multiplies it by frequencies of
24 bits: at most 2^−8 of it lost per token, about 1e-4 bits on average) and the last two
32-bit words. :class:`Summary` reports all three quantities.

Decoding needs bit-identical distributions: the header holds the model's fingerprint, the
context length and stride, and a SHA-256 of every token's frequencies and of the text; a
different model or reading is refused before decoding, and a difference anywhere after it is
an error, never wrong text. File format (version 1): 8 magic bytes, a 4-byte little-endian
header length, a JSON header, the coder's 32-bit words (little-endian), the SHA-256 of
everything before it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossent._extras import needs
from crossent._files import atomic_path
from crossent.coding.labels import PRECISION, coder_frequencies
from crossent.text.models import LanguageModel, Progress, Reading
from crossent.text.source import Text

MAGIC = b"XENTTXT\n"
FORMAT_VERSION = 1
CODER = "constriction range coder, 24-bit"
_CHECKSUM = 32
_HEX64 = frozenset("0123456789abcdef")
CODER_LOSS = -math.log2(1 - 2.0**-8)  # bits per token the range coder may lose, at most


def coder(user: str) -> Any:
    """The constriction module; where it is missing, an error naming ``user`` and the extra."""
    with needs(user, "text"):
        import constriction
    return constriction


def bound_bits(model_bits: float, tokens: int, vocab: int) -> float:
    """The most payload bits the coder may write for ``tokens`` tokens of ``model_bits``:
    model_bits + tokens · (−log2(1 − vocab / 2^24) + −log2(1 − 2^−8)) + 64.

    Args:
        model_bits: Σ −log2 q of the tokens under the float model.
        tokens: how many tokens are coded.
        vocab: the model's vocabulary size (each token gets at least 1 of 2^24).

    >>> round(bound_bits(1000.0, 100, 256) - 1000.0, 3)  # 64 + 100·(2.2e-5 + 5.65e-3)
    64.567
    """
    quantisation = -math.log2(1 - vocab / 2.0**PRECISION)
    return model_bits + tokens * (quantisation + CODER_LOSS) + 64


@dataclass(frozen=True)
class Summary:
    """What compress measured, in bits: the model's, the quantised model's, the payload's."""

    tokens: int
    text_bytes: int
    model_bits: float  # Σ −log2 q(token): score's total
    quantised_bits: float  # Σ −log2 q̂(token) under the 24-bit frequencies coded with
    payload_bits: int
    file_bytes: int
    bound_bits: float  # the most payload the bound allows


def compress(
    path: str | os.PathLike[str],
    lm: LanguageModel,
    text: Text,
    reading: Reading,
    on_progress: Progress | None = None,
) -> Summary:
    """Range-code ``text`` under ``lm`` read as ``reading`` into a new file at ``path``.

    Each token is coded with the model's next-token distribution quantised to 24-bit integer
    frequencies, so the payload is within :func:`bound_bits` of the model's bits (what
    :func:`crossent.text.score.score` reports for the same reading).

    Args:
        path: the file to write.
        lm: the model, from :func:`crossent.text.models.load`; decoding needs the same one.
        text: from :func:`crossent.text.source.read_text`.
        reading: ``lm.reading(context, stride)``; decoding needs the same.
        on_progress: called with the number of tokens coded so far, or None.

    Returns:
        A :class:`Summary`: the model's bits, the quantised model's, the payload's, the
        file's size and the bound.

    >>> import tempfile
    >>> from crossent.text import byte_model, models, source
    >>> scratch = tempfile.TemporaryDirectory()
    >>> folder = Path(scratch.name)
    >>> byte_model.uniform().save(folder, training={})  # q = 1/256: 8 bits a byte
    >>> _ = (folder / "t.txt").write_text("hello, world")
    >>> lm = models.load(folder)
    >>> text, reading = source.read_text(folder / "t.txt"), lm.reading(None, None)
    >>> summary = compress(folder / "t.xent", lm, text, reading)
    >>> summary.model_bits, summary.payload_bits <= summary.bound_bits
    (96.0, True)
    >>> decompress(folder / "t.xent", lm)
    b'hello, world'
    >>> scratch.cleanup()
    """
    constriction = coder("crossent text compress")
    tokens = lm.tokenize(text)
    encoder = constriction.stream.queue.RangeEncoder()
    coder_model = constriction.stream.model.Categorical(perfect=False)
    predictions = hashlib.sha256()
    model_bits = quantised = 0.0
    done = 0
    for u in lm.coding_weights(tokens, reading, on_progress):
        chunk = np.ascontiguousarray(tokens[done : done + len(u)], dtype=np.int32)
        free, fingerprint = coder_frequencies(u)
        predictions.update(fingerprint)
        rows = np.arange(len(chunk))
        model_bits += float(np.sum(np.log2(u.sum(axis=1)) - np.log2(u[rows, chunk])))
        quantised += float(np.sum(PRECISION - np.log2(free[rows, chunk] + 1)))
        encoder.encode(chunk, coder_model, free)
        done += len(chunk)
    words = np.asarray(encoder.get_compressed(), dtype=np.uint32)
    header = {
        "format_version": FORMAT_VERSION,
        "coder": CODER,
        "model_kind": lm.kind,
        "model_sha256": lm.fingerprint(),
        "context": reading.context,
        "stride": reading.stride,
        "tokens": len(tokens),
        "vocab": lm.vocab,
        "bytes": len(text.data),
        "payload_words": len(words),
        "predictions_sha256": predictions.hexdigest(),
        "text_sha256": hashlib.sha256(text.data).hexdigest(),
        "encoded_with": lm.versions(),
    }
    size = _write(Path(path), header, words)
    bound = bound_bits(model_bits, len(tokens), lm.vocab)
    return Summary(len(tokens), len(text.data), model_bits, quantised, 32 * len(words), size, bound)


def decompress(
    path: str | os.PathLike[str],
    lm: LanguageModel,
    context: int | None = None,
    stride: int | None = None,
    on_progress: Progress | None = None,
) -> bytes:
    """The bytes coded in the file at ``path``, decoded under ``lm``: the same bytes that were
    compressed, or a ValueError (another model, context or stride, a damaged file, or
    distributions not bit-identical to the compressing machine's), never other text.

    Args:
        path: a file written by :func:`compress`.
        lm: the model it was compressed with.
        context, stride: None takes the file's; given, they must be the file's.
        on_progress: called with the number of tokens decoded so far, or None.

    :func:`compress`'s example decodes the file it writes.
    """
    constriction = coder("crossent text decompress")
    header, words = read(path)
    name = repr(os.fspath(path))
    reading = _check_match(header, lm, context, stride, name)
    decoder = constriction.stream.queue.RangeDecoder(words)
    coder_model = constriction.stream.model.Categorical(perfect=False)
    stepper = lm.stepper(reading, header["tokens"])
    predictions = hashlib.sha256()
    tokens = []
    for index in range(header["tokens"]):
        free, fingerprint = coder_frequencies(stepper.weights()[None, :])
        predictions.update(fingerprint)
        try:
            token = int(decoder.decode(coder_model, free)[0])
        except (RuntimeError, ValueError, OverflowError) as error:
            raise ValueError(f"{name} is damaged: its tokens do not decode ({error})") from None
        tokens.append(token)
        stepper.push(token)
        if on_progress is not None and (index % 64 == 63 or index + 1 == header["tokens"]):
            on_progress(index + 1, header["tokens"])
    _check_predictions(predictions.hexdigest(), header, lm, name)
    data = lm.detokenize(np.asarray(tokens, dtype=np.int64))
    if hashlib.sha256(data).hexdigest() != header["text_sha256"]:
        raise ValueError(f"{name}: the decoded text fails its checksum; refusing to return it")
    return data


def _check_match(
    header: dict[str, Any], lm: LanguageModel, context: int | None, stride: int | None, name: str
) -> Reading:
    """The file's reading, after checking that the model and any reading given are its."""
    if header["model_sha256"] != lm.fingerprint() or header["vocab"] != lm.vocab:
        raise ValueError(
            f"{name} was compressed with another model ({header['model_kind']}, sha256 "
            f"{header['model_sha256'][:12]}…; {str(lm.path)!r} is {lm.fingerprint()[:12]}…); "
            "decode it with the model it was compressed with"
        )
    if stride is not None and header["stride"] is None:
        lm.reading(header["context"], stride)  # the model's own word on a stride
    for option, given, stored in (("context", context, "context"), ("stride", stride, "stride")):
        if given is not None and given != header[stored]:
            raise ValueError(
                f"{name} was compressed with --{option} {header[stored]}; decoding it with "
                f"--{option} {given} would give other distributions: leave --{option} out or "
                f"pass {header[stored]}"
            )
    return lm.reading(header["context"], header["stride"])


def _check_predictions(digest: str, header: dict[str, Any], lm: LanguageModel, name: str) -> None:
    if digest != header["predictions_sha256"]:
        then = ", ".join(f"{k} {v}" for k, v in header["encoded_with"].items())
        now = ", ".join(f"{k} {v}" for k, v in lm.versions().items())
        raise ValueError(
            f"{name}: the model's distributions here are not bit-identical to those at "
            f"compression (then: {then}; here: {now}); refusing to return text"
        )


def recognise(path: Path) -> str | None:
    """None if ``path`` is a compressed-text file (which ``--force`` may replace)."""
    with path.open("rb") as file:
        start = file.read(len(MAGIC))
    return None if start == MAGIC else "is not a crossent compressed-text file"


def read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], np.ndarray]:
    """The header and payload of a compressed-text file, after checking its checksum and
    every field of its header."""
    data = Path(path).read_bytes()
    name = repr(os.fspath(path))
    if not data.startswith(MAGIC):
        raise ValueError(f"{name} is not a crossent compressed-text file (wrong magic bytes)")
    body, checksum = data[:-_CHECKSUM], data[-_CHECKSUM:]
    if len(data) < len(MAGIC) + 4 + _CHECKSUM or hashlib.sha256(body).digest() != checksum:
        raise ValueError(f"{name} is damaged: its SHA-256 checksum does not match its content")
    (length,) = struct.unpack_from("<I", body, len(MAGIC))
    start = len(MAGIC) + 4
    if start + length > len(body):
        raise ValueError(f"{name} is damaged: its header runs past the end of the file")
    header = _parse_header(body[start : start + length], name)
    payload = body[start + length :]
    if len(payload) != 4 * header["payload_words"]:
        raise ValueError(
            f"{name} is damaged: {len(payload)} bytes of payload, header says "
            f"{header['payload_words']} words"
        )
    return header, np.frombuffer(payload, dtype="<u4").astype(np.uint32)


def _parse_header(text: bytes, name: str) -> dict[str, Any]:
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ValueError(f"{name} is damaged: its header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError(f"{name} is damaged: its header is not a JSON object")
    version = header.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise ValueError(
            f"{name} has format version {version!r}; this crossent reads version {FORMAT_VERSION}"
        )
    for key, ok, rule in _RULES:
        if key not in header:
            raise ValueError(f"{name} is damaged: its header's field {key!r} is missing")
        if not ok(header[key]):
            raise ValueError(
                f"{name} is damaged: its header's field {key!r} {rule}; got {header[key]!r:.40}"
            )
    if header["tokens"] > 4 * header["bytes"] + 16:  # a token is never much less than a byte
        raise ValueError(
            f"{name} is damaged: its header has {header['tokens']:,} tokens for "
            f"{header['bytes']:,} bytes"
        )
    return header


def _whole(low: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= low


def _sha256(value: Any) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _HEX64


_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("coder", lambda v: v == CODER, f"must be {CODER!r}"),
    ("model_kind", lambda v: isinstance(v, str), "must be text"),
    ("model_sha256", _sha256, "must be 64 hex digits"),
    ("context", _whole(1), "must be a whole number ≥ 1"),
    ("stride", lambda v: v is None or _whole(1)(v), "must be null or a whole number ≥ 1"),
    ("tokens", _whole(1), "must be a whole number ≥ 1"),
    ("vocab", lambda v: _whole(2)(v) and v < 2**PRECISION, "must be a whole number in [2, 2^24)"),
    ("bytes", _whole(1), "must be a whole number ≥ 1"),
    ("payload_words", _whole(0), "must be a whole number ≥ 0"),
    ("predictions_sha256", _sha256, "must be 64 hex digits"),
    ("text_sha256", _sha256, "must be 64 hex digits"),
    (
        "encoded_with",
        lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        "must map names to text",
    ),
]


def _write(path: Path, header: dict[str, Any], words: np.ndarray) -> int:
    """Write the file through a temporary name; return its size in bytes."""
    encoded = json.dumps(header, sort_keys=True).encode()
    body = MAGIC + struct.pack("<I", len(encoded)) + encoded + words.astype("<u4").tobytes()
    data = body + hashlib.sha256(body).digest()
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return len(data)
