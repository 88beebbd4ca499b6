"""Labels compressed with a model's predictions: the NLL in bits made real (SEED.md §4).

Label y_i is coded with the model's distribution for its own x_i by constriction's range coder,
so the compressed size is Σ_i −log2 q_i(y_i), the batch NLL in bits, plus a small overhead.

Quantisation. The coder needs integer frequencies: each row of predicted weights u (any
non-negative scale, e.g. exp(z − max z)) becomes frequencies w ≥ 1 summing to 2^24 by cutting
[0, 2^24) at floor(U_k / U_M · (2^24 − M)) + k, with U_k the running sum of u. The quantised
model q̂(y) = w_y / 2^24 is the one actually used, so its NLL is the target for the coder:
every label costs at most 24 bits, and may cost a little more or less than under the float
model. constriction receives w − 1 as floats, whose sum 2^24 − M is exact, so its own ("fast",
``perfect=False``) quantiser reproduces w exactly instead of approximating u a second time.

Decoding needs the same w, hence bit-identical predictions at both ends; :func:`decompress`
checks a hash of all w and of the labels, so a difference is an error, never wrong labels.

File format (version 1): 8 magic bytes, a 4-byte little-endian header length, a JSON header,
the coder's 32-bit words (little-endian), and the SHA-256 of everything before it.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossent._extras import needs
from crossent._files import atomic_path
from crossent.measures import entropy

PRECISION = 24
FORMAT_VERSION = 1
CODER = "constriction range coder, 24-bit"
MAGIC = b"XENT\r\n\x1a\n"
_TOTAL = 1 << PRECISION

Weights = Callable[[int, int], np.ndarray]  # (start, stop) -> (stop - start, M) float64 weights


def quantise(weights: np.ndarray) -> np.ndarray:
    """Integer frequencies ``(n, M)``, each ≥ 1, each row summing to 2^24, from weights u ≥ 0.

    >>> quantise(np.array([[2.0, 1.0, 1.0]])).tolist()  # (1/2, 1/4, 1/4) is exact
    [[8388607, 4194304, 4194305]]
    """
    free, _ = _free_frequencies(np.asarray(weights, dtype=np.float64))
    return (free + 1).astype(np.int64)


def _free_frequencies(u: np.ndarray) -> tuple[np.ndarray, bytes]:
    """Frequencies minus 1, as exact float64 integers: cuts at floor(U_k · (2^24 − M) / U_M).

    Also a fingerprint of them: the sum of each row's cuts, exact in float64, which any move
    of frequency between classes changes.
    """
    classes = u.shape[1]
    if classes < 2 or classes >= _TOTAL:
        raise ValueError(f"coding needs 2 to 2^24 - 1 classes; got {classes}")
    cuts = np.cumsum(u, axis=1)
    totals = cuts[:, -1].copy()
    bad = ~(np.isfinite(totals) & (totals > 0)) | (u < 0).any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(f"predicted weights must be finite, ≥ 0 and not all 0; row {row} is not")
    np.multiply(cuts, ((_TOTAL - classes) / totals)[:, None], out=cuts)
    np.floor(cuts, out=cuts)
    cuts[:, -1] = _TOTAL - classes  # the last cut is exact, whatever the rounding before it
    free = np.empty_like(cuts)
    free[:, 0] = cuts[:, 0]
    np.subtract(cuts[:, 1:], cuts[:, :-1], out=free[:, 1:])
    return free, cuts.sum(axis=1).astype("<f8").tobytes()


@dataclass(frozen=True)
class Summary:
    """Sizes in bits of N coded labels: the model's NLL, the coder's output, the baseline."""

    labels: int
    classes: int
    nll_bits: float  # Σ −log2 q(y) of the float model
    quantised_nll_bits: float  # Σ −log2 q̂(y) of the quantised model actually used
    compressed_bits: int  # the coder's payload
    file_bytes: int  # the whole file: header, payload, checksum
    label_entropy_bits: float  # N · H(Y): a code for the labels that ignores the features

    @property
    def overhead_bits(self) -> float:
        """Payload bits beyond the quantised model's NLL: the coder's own cost."""
        return self.compressed_bits - self.quantised_nll_bits


def compress(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    weights: Weights,
    *,
    identity: dict[str, str],
    chunk_rows: int,
) -> Summary:
    """Code ``labels`` (N,) under the rows of ``weights(start, stop)`` into a file at ``path``.

    Rows are requested ``chunk_rows`` at a time, in order; about 2^20 / M rows keep a chunk
    in cache.
    ``identity`` (e.g. hashes of the model and of the features) is stored in the header and
    must match at :func:`decompress`.
    """
    with needs("crossent.coding.compress"):
        import constriction

    labels = np.ascontiguousarray(labels, dtype=np.int32)
    if len(labels) == 0:
        raise ValueError("nothing to compress: no labels were given")
    encoder = constriction.stream.queue.RangeEncoder()
    model = constriction.stream.model.Categorical(perfect=False)
    predictions = hashlib.sha256()
    nll = quantised = 0.0
    classes = 0
    for start in range(0, len(labels), chunk_rows):
        chunk = labels[start : start + chunk_rows]
        u = _checked_weights(weights(start, start + len(chunk)), len(chunk), classes or None)
        classes = u.shape[1]
        _check_labels(chunk, classes, start)
        free, fingerprint = _free_frequencies(u)
        predictions.update(fingerprint)
        rows = np.arange(len(chunk))
        nll += float(np.sum(np.log2(u.sum(axis=1)) - _log2(u[rows, chunk])))
        quantised += float(np.sum(PRECISION - np.log2(free[rows, chunk] + 1)))
        encoder.encode(chunk, model, free)
    words = np.asarray(encoder.get_compressed(), dtype=np.uint32)
    header = {
        "format_version": FORMAT_VERSION,
        "coder": CODER,
        "labels": len(labels),
        "classes": classes,
        "chunk_rows": chunk_rows,
        "payload_words": len(words),
        "predictions_sha256": predictions.hexdigest(),
        "labels_sha256": _labels_hash(labels),
        **identity,
    }
    size = _write(Path(path), header, words)
    frequencies_of_labels = np.bincount(labels, minlength=classes) / len(labels)
    baseline = len(labels) * float(entropy(frequencies_of_labels))
    return Summary(len(labels), classes, nll, quantised, 32 * len(words), size, baseline)


def decompress(
    path: str | os.PathLike[str], weights: Weights, *, identity: dict[str, str]
) -> np.ndarray:
    """The labels coded in the file at ``path``, decoded under the same ``weights``."""
    with needs("crossent.coding.decompress"):
        import constriction

    header, words = read(path)
    for key, value in identity.items():
        if header.get(key) != value:
            raise ValueError(
                f"{os.fspath(path)!r} was compressed with a different {key.removesuffix('_sha256')}"
                f" ({key} {str(header.get(key))[:12]}…, here {value[:12]}…); use the same as "
                "at compression"
            )
    decoder = constriction.stream.queue.RangeDecoder(words)
    model = constriction.stream.model.Categorical(perfect=False)
    count, chunk_rows = header["labels"], header["chunk_rows"]
    predictions = hashlib.sha256()
    labels = np.empty(count, dtype=np.int32)
    for start in range(0, count, chunk_rows):
        stop = min(count, start + chunk_rows)
        u = _checked_weights(weights(start, stop), stop - start, header["classes"])
        free, fingerprint = _free_frequencies(u)
        predictions.update(fingerprint)
        labels[start:stop] = decoder.decode(model, free)
    if predictions.hexdigest() != header["predictions_sha256"]:
        raise ValueError(
            "the model's predictions here are not bit-identical to those at compression "
            "(another machine, library version or thread count?); refusing to return labels"
        )
    if _labels_hash(labels) != header["labels_sha256"]:
        raise ValueError("the decoded labels fail their checksum; refusing to return them")
    return labels


def read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], np.ndarray]:
    """The header and payload of a compressed-labels file, after checking its checksum."""
    data = Path(path).read_bytes()
    name = repr(os.fspath(path))
    if not data.startswith(MAGIC):
        raise ValueError(f"{name} is not a crossent compressed-labels file (wrong magic bytes)")
    body, checksum = data[:-32], data[-32:]
    if len(data) < len(MAGIC) + 4 + 32 or hashlib.sha256(body).digest() != checksum:
        raise ValueError(f"{name} is damaged: its SHA-256 checksum does not match its content")
    (length,) = struct.unpack_from("<I", body, len(MAGIC))
    start = len(MAGIC) + 4
    header = json.loads(body[start : start + length])
    if header.get("format_version") != FORMAT_VERSION:
        raise ValueError(
            f"{name} has format version {header.get('format_version')!r}; this crossent reads "
            f"version {FORMAT_VERSION}"
        )
    words = np.frombuffer(body[start + length :], dtype="<u4").astype(np.uint32)
    if len(words) != header["payload_words"]:
        raise ValueError(
            f"{name} is damaged: {len(words)} payload words, header says {header['payload_words']}"
        )
    return header, words


def _write(path: Path, header: dict[str, Any], words: np.ndarray) -> int:
    """Write the file through a temporary name; return its size in bytes."""
    encoded = json.dumps(header, sort_keys=True).encode()
    body = MAGIC + struct.pack("<I", len(encoded)) + encoded + words.astype("<u4").tobytes()
    data = body + hashlib.sha256(body).digest()
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return len(data)


def _checked_weights(weights: np.ndarray, rows: int, classes: int | None) -> np.ndarray:
    u = np.ascontiguousarray(weights, dtype=np.float64)
    if u.ndim != 2 or u.shape[0] != rows or (classes is not None and u.shape[1] != classes):
        expected = f"({rows}, {classes if classes is not None else 'M'})"
        raise ValueError(f"predicted weights must have shape {expected}; got {u.shape}")
    return u


def _check_labels(labels: np.ndarray, classes: int, start: int) -> None:
    bad = (labels < 0) | (labels >= classes)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"labels must be class indices in [0, {classes}); got {int(labels[row])} at row "
            f"{start + row}"
        )


def _labels_hash(labels: np.ndarray) -> str:
    return hashlib.sha256(np.asarray(labels, dtype="<i4").tobytes()).hexdigest()


def _log2(values: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):  # a label of probability 0 costs +inf bits
        logs: np.ndarray = np.log2(values)
    return logs
