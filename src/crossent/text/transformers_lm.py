"""A Hugging Face causal LM in a local folder, as a :class:`~crossent.text.models.LanguageModel`.

The folder is read with ``AutoModelForCausalLM`` and ``AutoTokenizer``, offline (nothing is
downloaded). The text's tokens y_1 … y_n follow the tokenizer's BOS token (else its EOS token,
as lm-evaluation-harness does), whose own probability is not counted; a tokenizer with neither
gives the first token the uniform distribution, log2 V bits. Tokens are scored in the sliding
windows of :mod:`crossent.text.windows`, a batch of windows per forward pass, with
:func:`crossent.torch.cross_entropy` in base 2.

Coding runs the model token by token with its key-value cache, window by window: the encoder
exactly as the decoder must, so both compute the same floating-point operations in the same
order. Decoding therefore needs what encoding had: the same model files, transformers and
torch versions, device and thread count (compressed files record them).
"""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crossent._extras import needs
from crossent.text.models import LanguageModel, Progress, Reading, Stepper
from crossent.text.source import Text
from crossent.text.windows import Window, check_window, windows
from crossent.torch import cross_entropy

KIND = "transformers causal LM"
_DEFINING = (  # the files whose bytes define a model's distributions
    "config.json",
    "*.safetensors",
    "*.bin",
    "*.index.json",
    "tokenizer*",
    "vocab*",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
    "*.model",
    "*.tiktoken",
)
_LOGITS_BYTES = 1 << 28  # the logits of one batch of windows, at most


@contextmanager
def _offline() -> Iterator[None]:
    """Nothing is fetched from the Hub while a model loads, and no progress bar is drawn
    (the command draws its own)."""
    from transformers.utils import logging

    saved = {key: os.environ.get(key) for key in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({key: "1" for key in saved})
    bars = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    try:
        yield
    finally:
        if bars:
            logging.enable_progress_bar()  # type: ignore[no-untyped-call]
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def load(folder: Path, device: str | None) -> TransformersModel:
    """The causal LM and tokenizer in ``folder``; anything else is a ValueError naming it."""
    with needs("crossent text", "text"):
        import transformers
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    name = repr(str(folder))
    with _offline():
        try:
            config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError) as error:
            raise ValueError(
                f"{name}: transformers cannot read its config.json ({error})"
            ) from None
        if config.model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
            raise ValueError(
                f"{name} holds a {config.model_type!r} model, which is not a causal language "
                "model (AutoModelForCausalLM has no class for it)"
            )
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{name} has no tokenizer transformers can load ({error})") from None
        try:
            model = transformers.AutoModelForCausalLM.from_pretrained(
                folder, local_files_only=True, dtype="auto"
            )
        except (OSError, ValueError, RuntimeError) as error:
            raise ValueError(f"{name}: transformers cannot load its weights ({error})") from None
    target = device or ("cuda" if torch.cuda.is_available() else "cpu")
    moved: Any = model.to(target)  # type: ignore[arg-type]
    return TransformersModel(folder, moved.eval(), tokenizer)


class TransformersModel(LanguageModel):
    """A causal LM and its tokenizer (see the module's docstring)."""

    kind = KIND

    def __init__(self, path: Path, model: Any, tokenizer: Any) -> None:
        self.path, self.model, self.tokenizer = path, model, tokenizer
        head = model.get_output_embeddings()
        self.vocab = int(head.weight.shape[0]) if head is not None else model.config.vocab_size
        start = tokenizer.bos_token_id
        self.start: int | None = tokenizer.eos_token_id if start is None else start
        positions = getattr(model.config, "max_position_embeddings", None)
        self.max_context = int(positions or getattr(model.config, "n_positions", 1024) or 1024)
        self.device = next(model.parameters()).device
        # the key-value cache's name: `cache` in recent transformers, `past_key_values` before
        forward = inspect.signature(model.forward).parameters
        self.cache_name = "cache" if "cache" in forward else "past_key_values"

    def reading(self, context: int | None, stride: int | None) -> Reading:
        context = min(self.max_context, 1024) if context is None else context
        if context > self.max_context:
            raise ValueError(
                f"`--context` must be at most {self.max_context}, the model's positions; got "
                f"{context}"
            )
        stride = max(1, context // 2) if stride is None else stride
        check_window(context, stride)
        return Reading(context, stride)

    def tokenize(self, text: Text) -> np.ndarray:
        ids = self.tokenizer(text.text, add_special_tokens=False)["input_ids"]
        back = self.tokenizer.decode(ids, clean_up_tokenization_spaces=False)
        if back != text.text:
            at = next(
                (i for i, (a, b) in enumerate(zip(back, text.text, strict=False)) if a != b), None
            )
            at = min(len(back), len(text.text)) if at is None else at
            raise ValueError(
                f"{text.name} does not survive the tokenizer of {str(self.path)!r}: decoding its "
                f"tokens changes the text at character {at:,}; it cannot be scored or "
                "compressed exactly"
            )
        tokens = np.asarray(ids, dtype=np.int64)
        if len(tokens) and tokens.max() >= self.vocab:
            raise ValueError(
                f"the tokenizer of {str(self.path)!r} gives token {int(tokens.max())}, beyond the "
                f"model's {self.vocab} outputs"
            )
        return tokens

    def detokenize(self, tokens: np.ndarray) -> bytes:
        text = self.tokenizer.decode(tokens.tolist(), clean_up_tokenization_spaces=False)
        return str(text).encode("utf-8")

    def token_spans(self, text: Text, tokens: np.ndarray) -> np.ndarray:
        if not getattr(self.tokenizer, "is_fast", False):
            raise ValueError(
                f"--html needs the character offsets of each token, which the slow tokenizer of "
                f"{str(self.path)!r} does not give; save a fast one (tokenizer.json) with it"
            )
        found = self.tokenizer(text.text, add_special_tokens=False, return_offsets_mapping=True)
        return np.asarray(found["offset_mapping"], dtype=np.int64).reshape(-1, 2)

    def fingerprint(self) -> str:
        """SHA-256 over the name and SHA-256 of each file that defines the model."""
        digest = hashlib.sha256()
        for file in sorted(self.path.iterdir()):
            if file.is_file() and any(file.match(pattern) for pattern in _DEFINING):
                digest.update(file.name.encode() + b"\0")
                digest.update(hashlib.sha256(file.read_bytes()).digest())
        return digest.hexdigest()

    def versions(self) -> dict[str, str]:
        import transformers

        device = str(self.device)
        if self.device.type == "cuda":
            device += f" ({torch.cuda.get_device_name(self.device)})"
        return {
            **super().versions(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "device": device,
            "threads": str(torch.get_num_threads()),
        }

    def _sequence(self, tokens: np.ndarray) -> np.ndarray:
        """y: the start token, if any, then the text's tokens."""
        start = [] if self.start is None else [self.start]
        return np.concatenate([np.asarray(start, dtype=np.int64), tokens])

    def token_bits(
        self, tokens: np.ndarray, reading: Reading, on_progress: Progress | None = None
    ) -> np.ndarray:
        y = self._sequence(tokens)
        assert reading.stride is not None
        spans = windows(len(y), reading.context, reading.stride)
        bits = [np.full(1 if self.start is None else 0, np.log2(self.vocab))]
        length = spans[0].end - spans[0].begin if spans else 1
        batch = max(1, _LOGITS_BYTES // (4 * length * self.vocab))
        done = len(bits[0])
        for i in range(0, len(spans), batch):
            part = spans[i : i + batch]
            bits.extend(self._window_bits(y, part))
            done += sum(w.end - w.first for w in part)
            if on_progress is not None:
                on_progress(done, len(tokens))
        return np.concatenate(bits)

    @torch.no_grad()
    def _window_bits(self, y: np.ndarray, part: list[Window]) -> list[np.ndarray]:
        """Bits of the scored tokens of windows of one length, in one forward pass."""
        inputs = torch.from_numpy(np.stack([y[w.begin : w.end] for w in part])).to(self.device)
        logits = self.model(input_ids=inputs).logits
        rows = [logits[b, w.first - w.begin - 1 : w.end - w.begin - 1] for b, w in enumerate(part)]
        targets = torch.cat([inputs[b, w.first - w.begin :] for b, w in enumerate(part)])
        bits = cross_entropy(torch.cat(rows).float(), targets, reduction="none", base=2.0)
        out = bits.double().cpu().numpy()
        return list(np.split(out, np.cumsum([w.end - w.first for w in part])[:-1]))

    def stepper(self, reading: Reading, count: int) -> Stepper:
        assert reading.stride is not None
        return _CachedStepper(self, count, reading)


class _CachedStepper(Stepper):
    """Token by token with the key-value cache; each window starts from a fresh cache filled
    with the tokens it reads before its first scored one."""

    def __init__(self, lm: TransformersModel, count: int, reading: Reading) -> None:
        assert reading.stride is not None
        self.lm = lm
        self.y: list[int] = [] if lm.start is None else [lm.start]
        self.length = count + len(self.y)
        self.windows = {w.first: w for w in windows(self.length, reading.context, reading.stride)}
        self.cache: Any = None
        self.logits: torch.Tensor | None = None

    def weights(self) -> np.ndarray:
        if not self.y:  # no start token: the first token is uniform
            return np.ones(self.lm.vocab, dtype=np.float64)
        window = self.windows.get(len(self.y))
        if window is not None:
            self._run(self.y[window.begin : window.first], fresh=True)
        elif self.logits is None:
            raise RuntimeError("stepper: no distribution for the next token")
        assert self.logits is not None
        z = self.logits.double()
        return (z - z.max()).exp().cpu().numpy()

    def push(self, token: int) -> None:
        self.y.append(token)
        if 1 < len(self.y) < self.length and len(self.y) not in self.windows:
            self._run([token], fresh=False)

    @torch.no_grad()
    def _run(self, ids: list[int], fresh: bool) -> None:
        inputs = torch.tensor([ids], dtype=torch.long, device=self.lm.device)
        given = {} if fresh else {self.lm.cache_name: self.cache}
        out = self.lm.model(input_ids=inputs, use_cache=True, **given)
        self.cache, self.logits = out[self.lm.cache_name], out.logits[0, -1]
