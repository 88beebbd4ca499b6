"""A text's code length under a language model: bits in all, per byte, token and character.

Cross entropy is a code length: a model that gives a text probability q codes it in −log2 q
bits (SEED.md §4), and the probability of a text is the product of each token's given those
before it, so

    total bits = Σ_i −log2 q(y_i | y_<i),    bits per byte = total / UTF-8 bytes,
    perplexity = 2^(total / tokens)

Bits per byte is the figure to compare across tokenizers and with compressors, whose outputs
are bytes: :mod:`crossent.text.yardsticks` gives theirs on the same bytes. ``base`` e gives
nats for every figure but perplexity, which has no unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from crossent._checks import check_base
from crossent.text.models import LanguageModel, Progress, Reading
from crossent.text.source import Text
from crossent.text.yardsticks import Yardstick, yardsticks


@dataclass(frozen=True)
class TextScore:
    """The bits of each token of a text under a model, and the sizes of the yardsticks."""

    text: Text
    model: str
    model_kind: str
    reading: Reading
    token_bits: np.ndarray  # −log2 q of each token
    compressors: list[Yardstick] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return len(self.token_bits)

    @property
    def total_bits(self) -> float:
        return float(np.sum(self.token_bits))

    @property
    def perplexity(self) -> float:
        """2^(bits per token): the number of equally likely tokens that costs as much."""
        return float(2.0 ** (self.total_bits / self.tokens))

    def to_dict(self, base: float = 2.0) -> dict[str, Any]:
        """The figures, in bits (``base`` 2), nats (e) or any unit; JSON-ready.

        >>> score = TextScore(Text.of(b"ab", "x"), "m", "k", Reading(8, None), np.array([1., 3.]))
        >>> d = score.to_dict()
        >>> d["total_bits"], d["bits_per_byte"], d["perplexity_per_token"]
        (4.0, 2.0, 4.0)
        """
        check_base(base)
        unit = "bits" if base == 2 else "nats" if base == math.e else f"log{base:g} units"
        scale = math.log(2.0) / math.log(base)
        total = self.total_bits * scale
        data, chars = len(self.text.data), len(self.text.text)
        result: dict[str, Any] = {
            "file": self.text.name.strip("'"),
            "model": self.model,
            "model_kind": self.model_kind,
            "context": self.reading.context,
            "stride": self.reading.stride,
            "unit": unit,
            "tokens": self.tokens,
            "bytes": data,
            "characters": chars,
            f"total_{_key(unit)}": total,
            f"{_key(unit)}_per_byte": total / data,
            f"{_key(unit)}_per_token": total / self.tokens,
            f"{_key(unit)}_per_character": total / chars,
            "perplexity_per_token": self.perplexity,
            "compressors": {
                y.name: {
                    "bytes": y.compressed_bytes,
                    f"{_key(unit)}_per_byte": None
                    if y.compressed_bytes is None
                    else 8 * y.compressed_bytes * scale / data,
                    **({"note": y.note} if y.note else {}),
                }
                for y in self.compressors
            },
        }
        return result


def _key(unit: str) -> str:
    return unit.replace(" ", "_")


def score(
    text: Text,
    lm: LanguageModel,
    reading: Reading,
    on_progress: Progress | None = None,
    compressors: bool = True,
) -> TextScore:
    """The bits of ``text`` under ``lm``: Σ_i −log2 q(y_i | y_<i) over its tokens.

    Args:
        text: from :func:`crossent.text.source.read_text`.
        lm: from :func:`crossent.text.models.load`.
        reading: ``lm.reading(context, stride)``: the context length and, for a Hugging Face
            model, the stride of the sliding windows.
        on_progress: called with the number of tokens scored so far, or None.
        compressors: also measure gzip -9, bzip2 -9, xz -9 and zstd -19 on the same bytes.

    Returns:
        A :class:`TextScore`; ``.to_dict(base=2)`` gives total bits, bits per byte, token and
        character, and perplexity per token (``base=math.e``: nats).

    >>> import tempfile
    >>> from pathlib import Path
    >>> from crossent.text import byte_model, models, source
    >>> folder = tempfile.TemporaryDirectory()
    >>> byte_model.uniform().save(Path(folder.name), training={})  # q = 1/256 for every byte
    >>> _ = (Path(folder.name) / "t.txt").write_text("naïve")  # 5 characters, 6 bytes
    >>> lm = models.load(folder.name)
    >>> found = score(source.read_text(Path(folder.name) / "t.txt"), lm, lm.reading(None, None),
    ...               compressors=False).to_dict()
    >>> found["total_bits"], found["bits_per_byte"], found["bits_per_character"]
    (48.0, 8.0, 9.6)
    >>> folder.cleanup()
    """
    tokens = lm.tokenize(text)
    bits = lm.token_bits(tokens, reading, on_progress)
    found = yardsticks(text.data) if compressors else []
    return TextScore(text, str(lm.path), lm.kind, reading, bits, found)
