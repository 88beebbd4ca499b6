"""The language models text is scored and coded under: what crossent needs of one, and which
kind a folder holds.

A model gives each token of a text a distribution given the tokens before it. Scoring needs
the bits −log2 q(token) (:meth:`LanguageModel.token_bits`, batched); coding needs the same
distributions as weights, computed the same way at both ends: the encoder takes them for all
tokens (:meth:`LanguageModel.coding_weights`), the decoder one token at a time
(:meth:`LanguageModel.stepper`), learning each token only after its distribution was used.

Two kinds: the byte model of ``crossent text train`` (:class:`ByteLanguageModel`: tokens are
the bytes; integer arithmetic, so any machine decodes what any machine encoded) and a Hugging
Face causal LM (:mod:`crossent.text.transformers_lm`: decoding needs the same machine and
software as encoding).
"""

from __future__ import annotations

import abc
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from crossent.text import byte_model
from crossent.text.source import Text

Progress = Callable[[int, int], None]  # (tokens done, tokens in all)
_BLOCK = 1 << 18  # byte positions scored per block


@dataclass(frozen=True)
class Reading:
    """How a model reads a text: its context length (tokens) and, for windowed models, the
    stride of the windows (None for the byte model, which reads every byte with its full
    context)."""

    context: int
    stride: int | None


class Stepper(abc.ABC):
    """The next token's distribution, one token at a time: what a decoder can compute."""

    @abc.abstractmethod
    def weights(self) -> np.ndarray:
        """Weights ≥ 0 (float64, (V,)) of the next token, not all 0."""

    @abc.abstractmethod
    def push(self, token: int) -> None:
        """Append the token just coded."""


class LanguageModel(abc.ABC):
    """A model text can be scored and coded under (see the module's docstring)."""

    path: Path
    kind: str
    vocab: int  # classes of the next-token distribution

    @abc.abstractmethod
    def reading(self, context: int | None, stride: int | None) -> Reading:
        """The reading of ``--context``/``--stride`` (None: the model's default), checked."""

    @abc.abstractmethod
    def tokenize(self, text: Text) -> np.ndarray:
        """The tokens (int64) of ``text``; a text they do not give back is a ValueError."""

    @abc.abstractmethod
    def detokenize(self, tokens: np.ndarray) -> bytes:
        """The UTF-8 bytes of ``tokens``."""

    @abc.abstractmethod
    def token_spans(self, text: Text, tokens: np.ndarray) -> np.ndarray:
        """The characters of ``text`` each token stands for: (n, 2) start and end offsets."""

    @abc.abstractmethod
    def fingerprint(self) -> str:
        """SHA-256 (hex) of what defines the model's distributions: weights and tokenizer."""

    @abc.abstractmethod
    def token_bits(
        self, tokens: np.ndarray, reading: Reading, on_progress: Progress | None = None
    ) -> np.ndarray:
        """−log2 q of each token given those before it (float64, one per token)."""

    @abc.abstractmethod
    def stepper(self, reading: Reading, count: int) -> Stepper:
        """A stepper for a text of ``count`` tokens."""

    def coding_weights(
        self, tokens: np.ndarray, reading: Reading, on_progress: Progress | None = None
    ) -> Iterator[np.ndarray]:
        """The weights (rows of (n, V)) of every token in order, exactly as :meth:`stepper`
        gives them; by default by running the stepper over the known tokens."""
        stepper = self.stepper(reading, len(tokens))
        for index, token in enumerate(tokens.tolist()):
            yield stepper.weights()[None, :]
            stepper.push(token)
            if on_progress is not None and (index % 64 == 63 or index + 1 == len(tokens)):
                on_progress(index + 1, len(tokens))

    def versions(self) -> dict[str, str]:
        """The software the distributions are computed with (recorded in compressed files)."""
        import crossent

        return {"crossent": crossent.__version__, "numpy": np.__version__}


class ByteLanguageModel(LanguageModel):
    """The byte model of ``crossent text train``: tokens are bytes, the context (bytes a match
    may lie back) is the model's lookback."""

    kind = byte_model.KIND
    vocab = 256

    def __init__(self, path: Path, model: byte_model.ByteModel) -> None:
        self.path = path
        self.model = model

    def reading(self, context: int | None, stride: int | None) -> Reading:
        if stride is not None:
            raise ValueError(
                "`--stride` is for Hugging Face models: the byte model reads every byte with "
                "its full context, without windows"
            )
        if context is not None and context < 1:
            raise ValueError(f"`--context` must be at least 1 byte; got {context}")
        return Reading(self.model.spec.lookback if context is None else context, None)

    def tokenize(self, text: Text) -> np.ndarray:
        return np.frombuffer(text.data, dtype=np.uint8).astype(np.int64)

    def detokenize(self, tokens: np.ndarray) -> bytes:
        return np.asarray(tokens, dtype=np.uint8).tobytes()

    def token_spans(self, text: Text, tokens: np.ndarray) -> np.ndarray:
        """Byte i stands for the character it is part of (a UTF-8 lead byte starts one)."""
        lead = (np.asarray(tokens) & 0xC0) != 0x80
        character = np.cumsum(lead) - 1
        return np.stack([character, character + 1], axis=1)

    def fingerprint(self) -> str:
        return self.model.fingerprint()

    def _read_with(self, reading: Reading) -> byte_model.ByteModel:
        """The model with its lookback set to the reading's context."""
        return self.model.with_lookback(reading.context)

    def token_bits(
        self, tokens: np.ndarray, reading: Reading, on_progress: Progress | None = None
    ) -> np.ndarray:
        parts = []
        for start, u in self._blocks(tokens, reading, on_progress):
            chosen = u[np.arange(len(u)), tokens[start : start + len(u)]]
            parts.append(np.log2(u.sum(axis=1, dtype=np.float64)) - np.log2(chosen))
        return np.concatenate(parts)

    def coding_weights(
        self, tokens: np.ndarray, reading: Reading, on_progress: Progress | None = None
    ) -> Iterator[np.ndarray]:
        for _, u in self._blocks(tokens, reading, on_progress):
            yield u.astype(np.float64)  # exact: u < 2^32

    def _blocks(
        self, tokens: np.ndarray, reading: Reading, on_progress: Progress | None
    ) -> Iterator[tuple[int, np.ndarray]]:
        model, data = self._read_with(reading), np.asarray(tokens, dtype=np.uint8)
        for start in range(0, len(data), _BLOCK):
            stop = min(len(data), start + _BLOCK)
            yield start, model.text_weights(data, start, stop)
            if on_progress is not None:
                on_progress(stop, len(data))

    def stepper(self, reading: Reading, count: int) -> Stepper:
        return _ByteStepper(self._read_with(reading))


class _ByteStepper(Stepper):
    def __init__(self, model: byte_model.ByteModel) -> None:
        from crossent.text.features import FeatureState

        self.model = model
        self.state = FeatureState(model.spec)

    def weights(self) -> np.ndarray:
        contexts, matches = self.state.next()
        u = self.model.weights(np.array([contexts]), np.array([matches]))
        row: np.ndarray = u[0].astype(np.float64)
        return row

    def push(self, token: int) -> None:
        self.state.push(token)


def load(path: str | os.PathLike[str], device: str | None = None) -> LanguageModel:
    """The model in the folder ``path``: a crossent byte model or a Hugging Face causal LM.

    Args:
        path: a folder written by ``crossent text train`` (``crossent-text-model.json``), or a
            local Hugging Face model folder that ``AutoModelForCausalLM`` loads, with its
            tokenizer; nothing is downloaded.
        device: where a Hugging Face model runs ("cpu", "cuda", …; None: a GPU if there is
            one); the byte model computes on the CPU, in integers.

    Returns:
        A :class:`LanguageModel`: ``.tokenize(text)``, ``.token_bits(tokens, reading)`` (bits
        of each token, −log2 q(y_i | y_<i)), ``.reading(context, stride)``, ``.fingerprint()``.

    A folder that is neither kind, or a Hugging Face model that is not a causal LM, is a
    ValueError naming the folder. docs/text.md ("In Python") trains and loads a real one.

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> byte_model.uniform().save(Path(folder.name), training={})  # 8 bits for every byte
    >>> lm = load(folder.name)
    >>> lm.kind, lm.vocab, lm.reading(None, None).context
    ('crossent byte model', 256, 16)
    >>> folder.cleanup()
    """
    folder = Path(path)
    if not folder.is_dir():
        if not folder.exists():
            raise FileNotFoundError(2, "No such file or directory", str(folder))
        raise ValueError(f"--model must be a model folder; {str(folder)!r} is a file")
    if byte_model.is_byte_model(folder):
        return ByteLanguageModel(folder, byte_model.load(folder))
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"{str(folder)!r} is not a model folder: it has neither {byte_model.CARD} (a model "
            "of `crossent text train`) nor config.json (a Hugging Face model)"
        )
    from crossent.text import transformers_lm

    return transformers_lm.load(folder, device)
