"""Labels compressed with a model's predictions: the NLL in bits made real (docs/theory.md §4).

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
A damaged or forged file (even one whose checksum was made to match) is a ValueError that
names it, and nothing else: every field of the header is checked before it is used.

File format (version 1): 8 magic bytes, a 4-byte little-endian header length, a JSON header,
the coder's 32-bit words (little-endian), and the SHA-256 of everything before it.
"""

from __future__ import annotations

import concurrent.futures
import functools
import hashlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, NoReturn, TypeVar

import numpy as np
from numpy.typing import ArrayLike

from crossent._extras import needs
from crossent.coding import _container as container
from crossent.coding._container import sha256_hex, whole
from crossent.measures import entropy

PRECISION = 24
FORMAT_VERSION = 1
CODER = "constriction range coder, 24-bit"
MAGIC = b"XENT\r\n\x1a\n"
_TOTAL = 1 << PRECISION
_KIND = "compressed-labels"

Weights = Callable[[int, int], np.ndarray]  # (start, stop) -> (stop - start, M) float64 weights
_THREADS = min(4, os.cpu_count() or 1)
_SHARE_ELEMENTS = 1 << 18  # the fewest weights worth a thread of the compiled quantiser

_quantise: ModuleType | None
try:
    from crossent.coding import _quantise
except ImportError:  # built without a C compiler: NumPy computes the same frequencies
    _quantise = None


@functools.cache
def _pool() -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(_THREADS, thread_name_prefix="crossent-coding")


# a forked child has none of its parent's threads: it makes its own pool on first use
os.register_at_fork(after_in_child=_pool.cache_clear)


def quantise(weights: ArrayLike) -> np.ndarray:
    """Integer frequencies ``(n, M)``, each ≥ 1, each row summing to 2^24, from weights u ≥ 0.

    The quantised model q̂(y) = w_y / 2^24 is the one the coder uses: a label costs
    −log2 q̂(y) bits, at most 24.

    Args:
        weights: ``(n, M)`` non-negative weights u per row, of any scale (probabilities, or
            exp(z − max z) of logits z).

    >>> quantise(np.array([[2.0, 1.0, 1.0]])).tolist()  # (1/2, 1/4, 1/4) within a unit in 2^24
    [[8388607, 4194304, 4194305]]
    """
    free, _ = _free_frequencies(weights)
    return (free + 1).astype(np.int64)


def coder_frequencies(weights: ArrayLike) -> tuple[np.ndarray, bytes]:
    """What the range coder is given for rows of weights ``(n, M)``: the frequencies minus 1
    (exact float64 integers, each row summing to 2^24 − M) and their fingerprint (bytes).

    The quantisation of :func:`quantise`, for other coders of sequences (``crossent.text``).
    """
    return _free_frequencies(weights)


def _free_frequencies(u: ArrayLike, first_row: int = 0) -> tuple[np.ndarray, bytes]:
    """Frequencies minus 1, as exact float64 integers: cuts at floor(U_k · (2^24 − M) / U_M).

    Also a fingerprint of them: the sum of each row's cuts, exact in float64, which any move
    of frequency between classes changes. ``first_row``: the number of ``u``'s first row, for
    messages.
    """
    free, fingerprint, _, _ = _quantised(u, None, first_row)
    return free, fingerprint


def _quantised(
    weights: ArrayLike, labels: np.ndarray | None, first_row: int = 0
) -> tuple[np.ndarray, bytes, float, float]:
    """:func:`_free_frequencies` of ``weights``, and for ``labels`` the bits of the float and
    the quantised model: Σ log2 U_M − log2 u_y and Σ 24 − log2 w_y. Computed by the compiled
    quantiser (``_quantise.c``, one pass a row, on several threads) where it was built, else
    by NumPy: the same double operations in the same order, so the same frequencies."""
    u = np.ascontiguousarray(weights, dtype=np.float64)  # the C quantiser reads rows of doubles
    classes = u.shape[1]
    if classes < 2 or classes >= _TOTAL:
        raise ValueError(f"coding needs 2 to 2^24 - 1 classes; got {classes}")
    if _quantise is None:
        return _quantised_in_numpy(u, labels, first_row)
    free = np.empty_like(u)
    prints = np.empty(u.shape[0])
    y = None if labels is None else np.ascontiguousarray(labels, dtype=np.int32)
    bad, nll, quantised = -1, 0.0, 0.0
    for row, part_nll, part_quantised in _on_threads(u, y, free, prints):
        bad = row if bad < 0 <= row else bad
        nll, quantised = nll + part_nll, quantised + part_quantised
    if bad >= 0:
        _refuse_weights(first_row + bad)
    return free, prints.astype("<f8").tobytes(), nll, quantised


def _on_threads(
    u: np.ndarray, labels: np.ndarray | None, free: np.ndarray, prints: np.ndarray
) -> list[tuple[int, float, float]]:
    """The compiled quantiser over ``u``'s rows, a share of them per thread where there is
    work for several (it releases the GIL): per share, its first refused row and its bits."""
    assert _quantise is not None
    rows, classes = u.shape
    shares = max(1, min(_THREADS, rows * classes // _SHARE_ELEMENTS))
    step = -(-rows // shares)

    def share(start: int) -> tuple[int, float, float]:
        stop = min(rows, start + step)
        assert _quantise is not None
        bad, nll, quantised = _quantise.free_frequencies(
            u[start:].ctypes.data, stop - start, classes,
            0 if labels is None else labels[start:].ctypes.data,
            free[start:].ctypes.data, prints[start:].ctypes.data,
        )  # fmt: skip
        return (start + bad if bad >= 0 else -1), nll, quantised

    if shares == 1:
        return [share(0)]
    return list(_pool().map(share, range(0, rows, step)))


def _quantised_in_numpy(
    u: np.ndarray, labels: np.ndarray | None, first_row: int = 0
) -> tuple[np.ndarray, bytes, float, float]:
    """:func:`_quantised` in NumPy (where the compiled quantiser was not built)."""
    classes = u.shape[1]
    cuts = np.cumsum(u, axis=1)
    totals = cuts[:, -1].copy()
    bad = ~(np.isfinite(totals) & (totals > 0)) | (u < 0).any(axis=1)
    if bad.any():
        _refuse_weights(first_row + int(np.flatnonzero(bad)[0]))
    np.multiply(cuts, ((_TOTAL - classes) / totals)[:, None], out=cuts)
    np.floor(cuts, out=cuts)
    cuts[:, -1] = _TOTAL - classes  # the last cut is exact, whatever the rounding before it
    free = np.empty_like(cuts)
    free[:, 0] = cuts[:, 0]
    np.subtract(cuts[:, 1:], cuts[:, :-1], out=free[:, 1:])
    nll = quantised = 0.0
    if labels is not None:
        rows = np.arange(len(labels))
        nll = float(np.sum(np.log2(totals) - _log2(u[rows, labels])))
        quantised = float(np.sum(PRECISION - np.log2(free[rows, labels] + 1)))
    return free, cuts.sum(axis=1).astype("<f8").tobytes(), nll, quantised


def _refuse_weights(row: int) -> NoReturn:
    raise ValueError(f"predicted weights must be finite, ≥ 0 and not all 0; row {row} is not")


@dataclass(frozen=True)
class Summary:
    """Sizes in bits of N coded labels: the model's NLL, the coder's output, the baseline.

    Attributes:
        labels: N, the labels coded.
        classes: M, the classes of the model.
        nll_bits: Σ −log2 q(y) of the float model: the ideal code length, in bits.
        quantised_nll_bits: Σ −log2 q̂(y) of the quantised model the coder used, in bits.
        compressed_bits: the coder's payload, in bits (whole 32-bit words).
        file_bytes: the whole file: header, payload and checksum, in bytes.
        label_entropy_bits: N · H(Y), in bits: a code for the labels that ignores the features.

    >>> summary = Summary(100, 3, 52.1, 52.3, 64, 400, 158.5)
    >>> round(summary.overhead_bits, 1)     # payload − quantised NLL: the coder's own cost
    11.7
    """

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

    Label y_i is coded with the distribution of row i, so the payload is about the batch NLL
    Σ_i −log2 q_i(y_i) in bits (docs/theory.md §6). Needs ``pip install 'crossent[compress]'``.

    Args:
        path: the file to write (through a temporary beside it, put in place when complete).
        labels: ``(N,)`` class indices in [0, M).
        weights: ``weights(start, stop)`` gives rows ``start:stop`` of the model's predictions,
            ``(stop − start, M)`` non-negative weights of any scale; it must give the same
            numbers, bit for bit, at :func:`decompress`.
        identity: strings stored in the header (e.g. hashes of the model and of the features)
            that must match at :func:`decompress`.
        chunk_rows: rows requested at a time, in order; about 2^20 / M keep a chunk in cache.

    Returns:
        A :class:`Summary`: the NLL in bits, the payload's and the file's size, N·H(Y).

    >>> import tempfile
    >>> probs = np.array([[0.5, 0.25, 0.25], [0.1, 0.8, 0.1], [0.7, 0.2, 0.1]])
    >>> weights = lambda start, stop: probs[start:stop]
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = Path(folder.name) / "labels.xent"
    >>> summary = compress(path, np.array([0, 1, 0]), weights, identity={}, chunk_rows=2)
    >>> round(summary.nll_bits, 4)           # −log2(0.5 · 0.8 · 0.7), bits
    1.8365
    >>> decompress(path, weights, identity={}).tolist()
    [0, 1, 0]
    >>> folder.cleanup()
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
    starts = range(0, len(labels), chunk_rows)
    for start, (free, fingerprint, chunk_nll, chunk_quantised) in zip(
        starts, _one_ahead(_quantising(labels, weights, starts, chunk_rows)), strict=True
    ):
        predictions.update(fingerprint)
        nll, quantised = nll + chunk_nll, quantised + chunk_quantised
        encoder.encode(labels[start : start + chunk_rows], model, free)
    classes = free.shape[1]
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
    size = container.write(Path(path), MAGIC, header, words)
    frequencies_of_labels = np.bincount(labels, minlength=classes) / len(labels)
    baseline = len(labels) * float(entropy(frequencies_of_labels))
    return Summary(len(labels), classes, nll, quantised, 32 * len(words), size, baseline)


def _quantising(
    labels: np.ndarray, weights: Weights, starts: range, chunk_rows: int
) -> Iterator[Callable[[], tuple[np.ndarray, bytes, float, float]]]:
    """For each chunk, in order: its weights read and checked here, and its quantisation
    (:func:`_quantised`) to run."""
    classes: int | None = None
    for start in starts:
        chunk = labels[start : start + chunk_rows]
        u = _checked_weights(weights(start, start + len(chunk)), len(chunk), classes)
        classes = u.shape[1]
        _check_labels(chunk, classes, start)
        yield functools.partial(_quantised, u, chunk, start)


_Done = TypeVar("_Done")


def _one_ahead(jobs: Iterator[Callable[[], _Done]]) -> Iterator[_Done]:
    """Each job's result, in order, with the next job already running on a thread while the
    caller codes this one's chunk: the quantiser (which releases the GIL) and the range coder
    overlap. ``jobs`` itself (reading the model's weights) runs on the caller's thread."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="crossent-ahead") as ahead:
        pending: concurrent.futures.Future[_Done] | None = None
        for job in jobs:
            running = ahead.submit(job)
            if pending is not None:
                yield pending.result()
            pending = running
        if pending is not None:
            yield pending.result()


def decompress(
    path: str | os.PathLike[str],
    weights: Weights,
    *,
    identity: dict[str, str],
    rows: int | None = None,
) -> np.ndarray:
    """The labels coded in the file at ``path``, decoded under the same ``weights``.

    A damaged file, other weights or another identity is a ValueError that names the file,
    never wrong labels: the decoded labels must match the hash in the header.

    Args:
        path: a file written by :func:`compress`.
        weights: the same ``weights(start, stop)`` as at compression.
        identity: the same strings as at compression.
        rows: the number of rows ``weights`` has, if known: a file of another number of labels
            is refused before decoding.

    Returns:
        ``(N,)`` int64 class indices.

    >>> import tempfile
    >>> probs = np.array([[0.9, 0.1], [0.2, 0.8]])
    >>> weights = lambda start, stop: probs[start:stop]
    >>> folder = tempfile.TemporaryDirectory()
    >>> path = Path(folder.name) / "l.xent"
    >>> _ = compress(path, np.array([1, 1]), weights, identity={"model": "a"}, chunk_rows=8)
    >>> decompress(path, weights, identity={"model": "a"}, rows=2).tolist()
    [1, 1]
    >>> decompress(path, weights, identity={"model": "b"})
    Traceback (most recent call last):
    ValueError: '...l.xent' was compressed with a different model (model a…, here b…); use ...
    >>> folder.cleanup()
    """
    with needs("crossent.coding.decompress"):  # before the file is read
        import constriction  # noqa: F401

    header, words = read(path)
    name = repr(os.fspath(path))
    for key, value in identity.items():
        if header.get(key) != value:
            raise ValueError(
                f"{name} was compressed with a different {key.removesuffix('_sha256')}"
                f" ({key} {str(header.get(key))[:12]}…, here {value[:12]}…); use the same as "
                "at compression"
            )
    if rows is not None and header["labels"] != rows:
        raise ValueError(
            f"{name} holds {header['labels']:,} labels, but the data has {rows:,} rows; use "
            "the data it was compressed with"
        )
    labels = _decode(words, weights, header, name)
    if _labels_hash(labels) != header["labels_sha256"]:
        raise ValueError(f"{name}: the decoded labels fail their checksum; refusing to return them")
    return labels


def _decode(words: np.ndarray, weights: Weights, header: dict[str, Any], name: str) -> np.ndarray:
    """Decode chunk by chunk, checking the predictions' fingerprint at the end."""
    import constriction

    decoder = constriction.stream.queue.RangeDecoder(words)
    model = constriction.stream.model.Categorical(perfect=False)
    count, chunk_rows, classes = header["labels"], header["chunk_rows"], header["classes"]
    predictions = hashlib.sha256()
    chunks = []  # not one array of `count` labels: a forged count must not allocate

    def jobs() -> Iterator[Callable[[], tuple[np.ndarray, bytes]]]:
        for start in range(0, count, chunk_rows):
            stop = min(count, start + chunk_rows)
            u = _checked_weights(weights(start, stop), stop - start, None)
            if u.shape[1] != classes:
                raise ValueError(
                    f"{name} holds labels of {classes} classes; the model has {u.shape[1]}"
                )
            yield functools.partial(_free_frequencies, u, start)

    for free, fingerprint in _one_ahead(jobs()):
        predictions.update(fingerprint)
        try:
            chunks.append(np.asarray(decoder.decode(model, free), dtype=np.int32))
        except (RuntimeError, ValueError, OverflowError, AssertionError) as error:
            # constriction asserts on a payload its model cannot have written
            raise ValueError(f"{name} is damaged: its labels do not decode ({error})") from None
    if predictions.hexdigest() != header["predictions_sha256"]:
        raise ValueError(
            f"{name}: the model's predictions here are not bit-identical to those at "
            "compression (another machine, library version or thread count?); refusing to "
            "return labels"
        )
    return np.concatenate(chunks) if chunks else np.empty(0, np.int32)


def recognise(path: Path) -> str | None:
    """None if ``path`` is a compressed-labels file (which ``--force`` may replace)."""
    return container.recognise(path, MAGIC, _KIND)


def read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], np.ndarray]:
    """The header and payload of a compressed-labels file, after checking its checksum and
    every field of its header."""
    return container.read(path, MAGIC, _KIND, FORMAT_VERSION, _header_problem)


def _header_problem(header: dict[str, Any]) -> str | None:
    """What is wrong with a version-1 header, or None."""
    rules: list[tuple[str, Callable[[Any], bool], str]] = [
        ("coder", lambda v: v == CODER, f"must be {CODER!r}"),
        ("labels", lambda v: whole(v, 1), "must be a whole number ≥ 1"),
        ("classes", lambda v: whole(v, 2, _TOTAL - 1), "must be a whole number in [2, 2^24)"),
        ("chunk_rows", lambda v: whole(v, 1), "must be a whole number ≥ 1"),
        ("payload_words", lambda v: whole(v, 0), "must be a whole number ≥ 0"),
        ("predictions_sha256", sha256_hex, "must be 64 hex digits"),
        ("labels_sha256", sha256_hex, "must be 64 hex digits"),
    ]
    problem = container.field_problem(header, rules)
    if problem is not None:
        return problem
    others = [key for key in header if key not in {"format_version", *(r[0] for r in rules)}]
    for key in others:
        if not isinstance(header[key], str):
            return f"its header's field {key!r} must be text; got {header[key]!r:.40}"
    return None


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
