"""What the byte model sees of the bytes before position t: hashed contexts and match predictions.

Every feature of position t (the model's guess at byte x_t) is a function of x_0 … x_{t−1}
only, computed two ways that must agree exactly: for a whole text at once with NumPy
(:func:`features`, used to score, to compress and to train) and one byte at a time
(:class:`FeatureState`, used to decompress, when x_t is known only after its guess was used).
Both are integer arithmetic, so they agree on every machine.

Hashes. Byte b is the symbol b + 1 and a position before the text the symbol 0; the k bytes
before t hash to h_k(t) = Σ_i s_{t−k+i} · 257^(k−1−i) mod P with P = 2^31 − 1.

- **Context of order k** (``orders``): the row of order k's embedding table, h_k(t) itself
  where 257^k rows fit the table (orders 1 and 2: exact), else (h_k(t) · A mod P) mod 2^bits.
- **Match of order m** (``matches``): the byte that followed the most recent earlier occurrence
  of the m bytes before t, x_j for the largest j < t with h_m(j) = h_m(t), both m ≤ j, and
  t − j ≤ ``lookback``; :data:`NONE` if there is none. This is the "match model" of PAQ and lpaq:
  how the model copies what it has read, as LZ77 and xz do.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NONE = 256
"""The match prediction where the context has not occurred before (within the lookback)."""
_P = (1 << 31) - 1  # products of two residues stay below 2^62: int64 never overflows
_BASE = 257
_MIX = 1_402_623_421  # an odd multiplier < P that spreads hashed contexts over the buckets


@dataclass(frozen=True)
class FeatureSpec:
    """Which features the byte model reads.

    ``orders``: context orders (bytes before t) with an embedding table each; ``bucket_bits``:
    log2 of the rows of a hashed table; ``matches``: match orders; ``lookback``: how far back
    (bytes) a match may lie: the model's context length.
    """

    orders: tuple[int, ...]
    bucket_bits: int
    matches: tuple[int, ...]
    lookback: int

    def __post_init__(self) -> None:
        for name, values in (("orders", self.orders), ("matches", self.matches)):
            if (
                not values
                or any(not 1 <= v <= 64 for v in values)
                or len(set(values)) < len(values)
            ):
                raise ValueError(
                    f"`{name}` must be distinct whole numbers in [1, 64]; got {values}"
                )
        if not 4 <= self.bucket_bits <= 30:
            raise ValueError(f"`bucket_bits` must be in [4, 30]; got {self.bucket_bits}")
        if self.lookback < 1:
            raise ValueError(f"`lookback` must be ≥ 1 byte; got {self.lookback}")

    def rows(self, order: int) -> int:
        """Rows of the embedding table of context order ``order``.

        >>> spec = FeatureSpec((1, 2, 3), 17, (4,), 1024)
        >>> [spec.rows(k) for k in spec.orders]
        [257, 66049, 131072]
        """
        return int(min(_BASE**order, 1 << self.bucket_bits))

    @property
    def reach(self) -> int:
        """Bytes before t that any feature of t can depend on."""
        return max(max(self.orders), self.lookback + max(self.matches))


def features(data: np.ndarray, spec: FeatureSpec, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The features of positions ``start`` … len(data) − 1 of the bytes ``data`` (uint8).

    Returns (contexts, matches): the table row of each context order, int64 of shape
    (n, len(orders)), and the match predictions, int64 (n, len(matches)), in [0, 256].
    Only ``data[start − spec.reach:]`` is read: a long text is done a block at a time.
    """
    data = np.asarray(data, dtype=np.uint8)
    offset = max(0, start - spec.reach)
    window = data[offset:]
    begin = start - offset
    symbols = window.astype(np.int64) + 1
    # Positions of the window before `begin` get wrong features (the bytes before the window
    # count as 0); none of them is returned, and matches look back from `begin` on at most
    # lookback + m bytes, all inside the window.
    contexts = np.stack([_context_rows(symbols, k, spec)[begin:] for k in spec.orders], axis=1)
    matches = np.stack(
        [_match_predictions(symbols, m, spec.lookback)[begin:] for m in spec.matches], axis=1
    )
    return contexts, matches


def _hashes(symbols: np.ndarray, k: int) -> np.ndarray:
    """h_k(t) for each position t; symbols before the start (t − k < 0) count as 0."""
    n = len(symbols)
    h = np.zeros(n, dtype=np.int64)
    for shift in range(k, 0, -1):  # the symbol of x_{t−shift}, most significant first
        term = np.zeros(n, dtype=np.int64)
        term[shift:] = symbols[: max(0, n - shift)]
        h = (h * _BASE + term) % _P
    return h


def _context_rows(symbols: np.ndarray, k: int, spec: FeatureSpec) -> np.ndarray:
    h = _hashes(symbols, k)
    if _BASE**k <= (1 << spec.bucket_bits):
        return h
    return (h * _MIX % _P) & ((1 << spec.bucket_bits) - 1)


def _match_predictions(symbols: np.ndarray, m: int, lookback: int) -> np.ndarray:
    """x_j of the most recent earlier position j with the same m-byte context, else NONE."""
    n = len(symbols)
    predictions = np.full(n, NONE, dtype=np.int64)
    if m >= n:
        return predictions
    keys = _hashes(symbols, m)[m:]  # positions m … n − 1 have m bytes before them
    first = m
    order = np.argsort(keys, kind="stable")  # equal keys keep their positions' order
    sorted_keys = keys[order]
    repeat = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1]) + 1
    t = order[repeat] + first
    j = order[repeat - 1] + first
    near = t - j <= lookback
    predictions[t[near]] = symbols[j[near]] - 1
    return predictions


class FeatureState:
    """The features of the next position, kept up to date one byte at a time (decoding).

    ``next()`` gives (contexts, matches) of position t = the bytes pushed so far, equal to row
    t of :func:`features` of the whole text; ``push(byte)`` appends x_t.
    """

    def __init__(self, spec: FeatureSpec) -> None:
        self.spec = spec
        self.history = bytearray()
        longest = max(max(spec.orders), max(spec.matches))
        self._power = [pow(_BASE, k, _P) for k in range(longest)]  # 257^(k−1) of order k
        self._context = {k: 0 for k in spec.orders}  # h_k(t), kept rolling
        self._match = {m: 0 for m in spec.matches}
        self._last: dict[int, dict[int, int]] = {m: {} for m in spec.matches}

    def next(self) -> tuple[list[int], list[int]]:
        """(context rows, match predictions) of the next position."""
        spec, t = self.spec, len(self.history)
        mask = (1 << spec.bucket_bits) - 1
        contexts = [
            h if _BASE**k <= mask + 1 else (h * _MIX % _P) & mask for k, h in self._context.items()
        ]
        matches = []
        for m, key in self._match.items():
            j = self._last[m].get(key) if t >= m else None
            near = j is not None and t - j <= spec.lookback
            matches.append(self.history[j] if near and j is not None else NONE)
        return contexts, matches

    def push(self, byte: int) -> None:
        """Append x_t = ``byte``: record position t's match contexts, roll every hash on."""
        t = len(self.history)
        for m, key in self._match.items():
            if t >= m:
                self._last[m][key] = t
        self.history.append(byte)
        for table in (self._context, self._match):
            for k, h in table.items():
                table[k] = self._rolled(h, k, t + 1)

    def _rolled(self, h: int, k: int, t: int) -> int:
        """h_k(t) from h_k(t − 1): drop the symbol of x_{t−1−k}, append that of x_{t−1}."""
        leaving = self.history[t - 1 - k] + 1 if t - 1 - k >= 0 else 0
        return ((h - leaving * self._power[k - 1]) * _BASE + self.history[t - 1] + 1) % _P
