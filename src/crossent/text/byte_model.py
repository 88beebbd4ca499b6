"""The byte model of ``crossent text train``: next-byte weights in exact integer arithmetic.

The network reads the features of :mod:`crossent.text.features` (hashed contexts of the bytes
before t, and the bytes that followed earlier occurrences of those contexts: the match model
of PAQ) and gives the 256 next bytes weights u ≥ 1, q(b) = u_b / Σ u:

    x  = [E_1[c_1], …, E_K[c_K], M_1[p_1], …, M_J[p_J]]       embeddings, concatenated
    h  = min(⌊relu(x W₁ + b₁) / 2^16⌋, 2^21)                   hidden layer
    z  = ⌊(h W₂ + b₂) / 2^20⌋                                  256 logits and J gates
    z_b += g_j  wherever the match of order j predicts byte b  copying, as LZ77 does
    u_b = ⌊T[e mod 2^12] / 2^min(⌊e / 2^12⌋, 30)⌋,  e = max z − z_b,  T[f] ≈ 2^(31 − f/2^12)

so z is the log2 of the weight in units of 2^−12 bits. Every value is an integer: weights and
embeddings carry 16 fractional bits and are bounded (|E|, |M| ≤ 2^21, |W| ≤ 2^20) so that every
sum of products stays below 2^53, where float64 arithmetic is exact. Matrix products are then
the same in any order, on any BLAS, thread count or device, and so are the weights u: a file
compressed on one machine decodes on any other (see docs/text.md). T is computed with Python's
decimal module, also the same everywhere.

A model is a folder: ``crossent-text-model.json`` (the configuration) and ``weights.npz``
(the integers; NumPy's format, read without pickle).
"""

from __future__ import annotations

import dataclasses
import decimal
import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from crossent.text.features import NONE, FeatureSpec, features

CARD = "crossent-text-model.json"
WEIGHTS = "weights.npz"
KIND = "crossent byte model"
FORMAT_VERSION = 1
FRACTION = 16  # fractional bits of embeddings and weights
LOG_BITS = 12  # fractional bits of the logits z (log2 units)
_CLAMP = 1 << 21  # |embedding|, hidden activations
_WEIGHT_CLAMP = 1 << 20
_BIAS_CLAMP = 1 << 40  # biases are at scale 2^32: |b| < 256
_FLOOR = 30  # a byte's weight is at least 2^−30 of the top one's
_MAX_INPUTS = 1024  # (K + J)·d: with the clamps above, sums stay below 2^52
_BLOCK = 8192  # rows per matrix product when scoring


@dataclass(frozen=True)
class ByteConfig:
    """The shape of a byte model: its features, embedding width and hidden width."""

    spec: FeatureSpec
    width: int
    hidden: int

    def __post_init__(self) -> None:
        inputs = self.inputs
        if self.width < 1 or self.hidden < 1:
            raise ValueError(f"`width` and `hidden` must be ≥ 1; got {self.width}, {self.hidden}")
        if inputs > _MAX_INPUTS or self.hidden > _MAX_INPUTS:
            raise ValueError(
                f"the byte model takes at most {_MAX_INPUTS} inputs and hidden units (for exact "
                f"integer sums); got (orders + matches) × width = {inputs}, hidden {self.hidden}"
            )

    @property
    def inputs(self) -> int:
        return (len(self.spec.orders) + len(self.spec.matches)) * self.width

    @property
    def table_rows(self) -> list[int]:
        """Rows of each embedding table: the context orders', then 257 per match order."""
        return [self.spec.rows(k) for k in self.spec.orders] + [NONE + 1] * len(self.spec.matches)

    def to_dict(self) -> dict[str, Any]:
        spec = asdict(self.spec)
        return {"features": {k: list(v) if isinstance(v, tuple) else v for k, v in spec.items()},
                "width": self.width, "hidden": self.hidden}  # fmt: skip

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ByteConfig:
        f = data["features"]
        spec = FeatureSpec(
            tuple(f["orders"]), int(f["bucket_bits"]), tuple(f["matches"]), int(f["lookback"])
        )
        return cls(spec, int(data["width"]), int(data["hidden"]))


@functools.cache
def exp2_table() -> np.ndarray:
    """T[f] = round(2^(31 − f / 2^12)) for f in [0, 2^12): integers in (2^30, 2^31].

    Computed in decimal arithmetic (40 digits; products correctly rounded), so the same on
    every machine.

    >>> t = exp2_table()
    >>> int(t[0]) == 2**31, int(t[2048]) == round(2**30.5), len(t)
    (True, True, 4096)
    """
    context = decimal.Context(prec=40)
    step = context.power(decimal.Decimal(2), decimal.Decimal(-1) / decimal.Decimal(1 << LOG_BITS))
    value, table = decimal.Decimal(1 << 31), []
    for _ in range(1 << LOG_BITS):
        table.append(int(value.to_integral_value(rounding=decimal.ROUND_HALF_EVEN)))
        value = context.multiply(value, step)
    return np.asarray(table, dtype=np.int64)


def weights_of_logits(z: np.ndarray) -> np.ndarray:
    """Integer weights u ≥ 1 (int64, same shape) of integer logits z in 2^−12 bits, per row.

    >>> weights_of_logits(np.array([[0, -4096, -8192]])).tolist()  # 1, 1/2, 1/4
    [[2147483648, 1073741824, 536870912]]
    """
    z = np.asarray(z, dtype=np.int64)
    e = z.max(axis=-1, keepdims=True) - z
    shift = np.minimum(e >> LOG_BITS, _FLOOR)
    result: np.ndarray = exp2_table()[e & ((1 << LOG_BITS) - 1)] >> shift
    return result


class ByteModel:
    """A trained byte model: integer weights of the next byte, from any position's features."""

    def __init__(self, config: ByteConfig, arrays: dict[str, np.ndarray]) -> None:
        _check_arrays(config, arrays)
        self.config = config
        self.arrays = arrays
        rows = config.table_rows
        self._offsets = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
        self._table = arrays["embeddings"].astype(np.float64)
        self._w1 = arrays["w1"].astype(np.float64)
        self._b1 = arrays["b1"].astype(np.float64)
        self._w2 = arrays["w2"].astype(np.float64)
        self._b2 = arrays["b2"].astype(np.float64)

    @property
    def spec(self) -> FeatureSpec:
        return self.config.spec

    def with_lookback(self, lookback: int) -> ByteModel:
        """The same weights reading matches up to ``lookback`` bytes back."""
        if lookback == self.spec.lookback:
            return self
        spec = dataclasses.replace(self.spec, lookback=lookback)
        return ByteModel(dataclasses.replace(self.config, spec=spec), self.arrays)

    def logits(self, contexts: np.ndarray, matches: np.ndarray) -> np.ndarray:
        """Integer logits z (int64, (n, 256)) in 2^−12 bits, of rows of features."""
        n = len(contexts)
        rows = np.concatenate([contexts, matches], axis=1) + self._offsets
        x = self._table[rows].reshape(n, -1)
        hidden = np.floor(np.maximum(x @ self._w1 + self._b1, 0.0) / (1 << FRACTION))
        np.minimum(hidden, _CLAMP, out=hidden)
        out = np.floor((hidden @ self._w2 + self._b2) / (1 << (2 * FRACTION - LOG_BITS)))
        z = np.zeros((n, NONE + 1), dtype=np.int64)
        z[:, :NONE] = out[:, :NONE]
        gates = out[:, NONE:].astype(np.int64)
        every = np.arange(n)
        for j in range(matches.shape[1]):
            z[every, matches[:, j]] += gates[:, j]  # column NONE collects the misses
        return z[:, :NONE]

    def weights(self, contexts: np.ndarray, matches: np.ndarray) -> np.ndarray:
        """Integer weights u (int64, (n, 256)) of the next byte, of rows of features."""
        return weights_of_logits(self.logits(contexts, matches))

    def text_weights(self, data: np.ndarray, start: int, stop: int) -> np.ndarray:
        """The weights u of positions start … stop − 1 of the bytes ``data`` (uint8)."""
        contexts, matches = features(data[:stop], self.spec, start)
        blocks = [
            self.weights(contexts[i : i + _BLOCK], matches[i : i + _BLOCK])
            for i in range(0, len(contexts), _BLOCK)
        ]
        return np.concatenate(blocks) if blocks else np.zeros((0, NONE), dtype=np.int64)

    def save(self, folder: Path, training: dict[str, Any]) -> None:
        """Write the card and the weights into ``folder`` (which exists)."""
        card = {
            "kind": KIND,
            "format_version": FORMAT_VERSION,
            **self.config.to_dict(),
            "training": training,
        }
        (folder / CARD).write_text(json.dumps(card, indent=2) + "\n")
        with (folder / WEIGHTS).open("wb") as file:
            np.savez(file, **self.arrays)  # type: ignore[arg-type]

    def fingerprint(self) -> str:
        """SHA-256 of the configuration and the integer weights: what decoding must match."""
        digest = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for name in sorted(self.arrays):
            digest.update(name.encode() + np.ascontiguousarray(self.arrays[name], "<i8").tobytes())
        return digest.hexdigest()


def is_byte_model(folder: Path) -> bool:
    """Whether ``folder`` holds a crossent byte model (its card)."""
    return (folder / CARD).is_file()


def load(folder: str | os.PathLike[str]) -> ByteModel:
    """The byte model in ``folder``; a damaged or mismatched folder is a ValueError naming it."""
    folder = Path(folder)
    name = repr(str(folder / CARD))
    try:
        card = json.loads((folder / CARD).read_text())
        if card.get("kind") != KIND or card.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"it is not a version-{FORMAT_VERSION} {KIND} card")
        config = ByteConfig.from_dict(card)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{name} is damaged: {error}") from None
    weights = folder / WEIGHTS
    try:
        with np.load(weights, allow_pickle=False) as loaded:
            arrays = {key: loaded[key] for key in loaded.files}
    except (ValueError, OSError, EOFError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise ValueError(f"{str(weights)!r} is damaged: NumPy cannot read it ({error})") from None
    try:
        return ByteModel(config, arrays)
    except ValueError as error:
        raise ValueError(f"{str(weights)!r} does not match {name}: {error}") from None


def _check_arrays(config: ByteConfig, arrays: dict[str, np.ndarray]) -> None:
    """Shapes, integer dtypes and the bounds that keep the arithmetic exact."""
    out = NONE + len(config.spec.matches)
    expected = {
        "embeddings": ((sum(config.table_rows), config.width), _CLAMP),
        "w1": ((config.inputs, config.hidden), _WEIGHT_CLAMP),
        "b1": ((config.hidden,), _BIAS_CLAMP),
        "w2": ((config.hidden, out), _WEIGHT_CLAMP),
        "b2": ((out,), _BIAS_CLAMP),
    }
    if set(arrays) != set(expected):
        raise ValueError(f"the arrays must be {sorted(expected)}; got {sorted(arrays)}")
    for key, (shape, bound) in expected.items():
        array = arrays[key]
        if array.shape != shape or array.dtype.kind != "i":
            raise ValueError(
                f"{key!r} must be integers of shape {shape}; got {array.dtype} {array.shape}"
            )
        if array.size and int(np.abs(array).max()) > bound:
            raise ValueError(f"{key!r} must lie within ±{bound}; got {int(np.abs(array).max())}")


def from_float(config: ByteConfig, parameters: dict[str, np.ndarray]) -> ByteModel:
    """The byte model of trained float parameters (logits in nats), rounded to integers.

    ``parameters``: ``embeddings`` (rows, width), ``w1`` (inputs, hidden), ``b1``, ``w2``
    (hidden, 256 + J), ``b2``, as ``x @ w1 + b1`` computes. The output layer is divided by
    ln 2 (nats to bits); values beyond the bounds are clipped.
    """
    ln2 = float(np.log(2.0))

    def fixed(values: np.ndarray, scale: int, bound: int) -> np.ndarray:
        scaled = np.rint(np.asarray(values, dtype=np.float64) * scale)
        return np.clip(scaled, -bound, bound).astype(np.int32 if bound < 2**31 else np.int64)

    one, two = 1 << FRACTION, 1 << (2 * FRACTION)
    arrays = {
        "embeddings": fixed(parameters["embeddings"], one, _CLAMP),
        "w1": fixed(parameters["w1"], one, _WEIGHT_CLAMP),
        "b1": fixed(parameters["b1"], two, _BIAS_CLAMP),
        "w2": fixed(parameters["w2"] / ln2, one, _WEIGHT_CLAMP),
        "b2": fixed(parameters["b2"] / ln2, two, _BIAS_CLAMP),
    }
    return ByteModel(config, arrays)


def uniform(config: ByteConfig | None = None) -> ByteModel:
    """The byte model that knows nothing: every weight 0, so each byte gets q = 1/256 and costs
    exactly 8 bits whatever came before it. The baseline a trained model's bits are read
    against.

    Args:
        config: its shape; default the smallest (context order 1, match order 4).

    >>> u = uniform().text_weights(np.frombuffer(b"abc", np.uint8), 0, 3)
    >>> u.shape, bool((u == u[0, 0]).all())  # one weight for every byte: q = 1/256
    ((3, 256), True)
    """
    if config is None:
        config = ByteConfig(FeatureSpec((1,), 4, (4,), 16), width=1, hidden=1)
    outputs = NONE + len(config.spec.matches)
    zeros = {
        "embeddings": np.zeros((sum(config.table_rows), config.width)),
        "w1": np.zeros((config.inputs, config.hidden)),
        "b1": np.zeros(config.hidden),
        "w2": np.zeros((config.hidden, outputs)),
        "b2": np.zeros(outputs),
    }
    return from_float(config, zeros)


def recognise(folder: Path) -> str | None:
    """None if ``folder`` is a byte-model folder of ``crossent text train`` (which ``--force``
    may replace): its card and weights, and nothing but what training writes."""
    names = {path.name for path in folder.iterdir()}
    if CARD not in names:
        return f"is not a crossent byte model: it has no {CARD}"
    others = sorted(names - {CARD, WEIGHTS, "history.json"})
    if others:
        return (
            f"is not a crossent byte model folder: it holds {others[0]!r}, which training "
            "does not write"
        )
    return None
