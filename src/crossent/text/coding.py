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
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossent._extras import needs
from crossent.coding import _container as container
from crossent.coding._container import sha256_hex, whole
from crossent.coding.labels import PRECISION, coder_frequencies
from crossent.text.models import LanguageModel, Progress, Reading
from crossent.text.source import Text

MAGIC = b"XENTTXT\n"
FORMAT_VERSION = 1
CODER = "constriction range coder, 24-bit"
_KIND = "compressed-text"
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
    size = container.write(Path(path), MAGIC, header, words)
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
    return container.recognise(path, MAGIC, _KIND)


def read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], np.ndarray]:
    """The header and payload of a compressed-text file, after checking its checksum and
    every field of its header."""
    return container.read(path, MAGIC, _KIND, FORMAT_VERSION, _header_problem)


def _header_problem(header: dict[str, Any]) -> str | None:
    """What is wrong with a version-1 header, or None."""
    problem = container.field_problem(header, _RULES)
    if problem is None and header["tokens"] > 4 * header["bytes"] + 16:
        # a token is never much less than a byte
        problem = f"its header has {header['tokens']:,} tokens for {header['bytes']:,} bytes"
    return problem


_RULES: list[tuple[str, Callable[[Any], bool], str]] = [
    ("coder", lambda v: v == CODER, f"must be {CODER!r}"),
    ("model_kind", lambda v: isinstance(v, str), "must be text"),
    ("model_sha256", sha256_hex, "must be 64 hex digits"),
    ("context", lambda v: whole(v, 1), "must be a whole number ≥ 1"),
    ("stride", lambda v: v is None or whole(v, 1), "must be null or a whole number ≥ 1"),
    ("tokens", lambda v: whole(v, 1), "must be a whole number ≥ 1"),
    ("vocab", lambda v: whole(v, 2, 2**PRECISION - 1), "must be a whole number in [2, 2^24)"),
    ("bytes", lambda v: whole(v, 1), "must be a whole number ≥ 1"),
    ("payload_words", lambda v: whole(v, 0), "must be a whole number ≥ 0"),
    ("predictions_sha256", sha256_hex, "must be 64 hex digits"),
    ("text_sha256", sha256_hex, "must be 64 hex digits"),
    (
        "encoded_with",
        lambda v: isinstance(v, dict) and all(isinstance(x, str) for x in v.values()),
        "must map names to text",
    ),
]
