"""crossent.text: features, the integer byte model, windows, scoring and coding of text.

Models are built here in seconds: a tiny byte model trained for a few steps on a standard
library module, and a tiny random GPT-2 with a byte-level BPE tokenizer trained on the same
text (nothing is downloaded). Texts come from the CPython standard library.
"""

from __future__ import annotations

import hashlib
import json
import math
import sysconfig
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from crossent.coding import _container as container
from crossent.text import byte_model, coding, models, score
from crossent.text.byte_model import ByteConfig
from crossent.text.features import NONE, FeatureSpec, FeatureState, features
from crossent.text.source import Text
from crossent.text.train import TrainOptions, train
from crossent.text.windows import windows

STDLIB = Path(sysconfig.get_paths()["stdlib"])
SPEC = FeatureSpec(orders=(1, 2, 3), bucket_bits=10, matches=(3, 6), lookback=4096)
TINY = ByteConfig(SPEC, width=4, hidden=16)
UNICODE = "naïve café — 日本語, emoji 😀, Ελληνικά\n"


def corpus_bytes() -> bytes:
    return (STDLIB / "argparse.py").read_bytes()[:60_000]


def make_byte_model(folder: Path, seed: int = 0, steps: int = 40) -> models.LanguageModel:
    data = np.frombuffer(corpus_bytes(), np.uint8)
    trained = train(data, None, TINY, TrainOptions(steps=steps, batch_size=256, seed=seed))
    folder.mkdir()
    trained.model.save(folder, {"steps": trained.steps})
    return models.load(folder)


@pytest.fixture(scope="module")
def byte_lm(tmp_path_factory: pytest.TempPathFactory) -> models.LanguageModel:
    return make_byte_model(tmp_path_factory.mktemp("byte") / "model")


def make_gpt2(folder: Path, seed: int = 0) -> None:
    """A 2-layer GPT-2 of 32 dimensions and 64 positions, with a byte-level BPE tokenizer."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as bpe

    tokenizer = Tokenizer(bpe.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator([corpus_bytes().decode()], trainer)
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
    )
    fast.save_pretrained(folder)
    config = transformers.GPT2Config(
        vocab_size=len(fast), n_positions=64, n_embd=32, n_layer=2, n_head=2,
        bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(seed)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory) -> models.LanguageModel:
    folder = tmp_path_factory.mktemp("gpt2") / "model"
    make_gpt2(folder)
    return models.load(folder, "cpu")


def text_of(data: bytes | str, name: str = "'t.txt'") -> Text:
    return Text.of(data.encode() if isinstance(data, str) else data, name)


# ---- features: the batched and the byte-at-a-time computation agree ----


@pytest.mark.parametrize(
    "data",
    [corpus_bytes()[:5000], UNICODE.encode() * 7, b"a" * 300, b"ab"],
    ids=["python", "utf-8", "one byte repeated", "two bytes"],
)
def test_features_one_byte_at_a_time_equal_the_batched_ones(data: bytes) -> None:
    spec = FeatureSpec((1, 2, 4), 12, (2, 5, 9), lookback=100)  # matches further back cut off
    contexts, matches = features(np.frombuffer(data, np.uint8), spec)
    state = FeatureState(spec)
    for t, byte in enumerate(data):
        assert state.next() == (contexts[t].tolist(), matches[t].tolist()), t
        state.push(byte)


def test_features_of_a_block_equal_those_of_the_whole_text() -> None:
    data = np.frombuffer(corpus_bytes()[:20_000], np.uint8)
    spec = FeatureSpec((1, 2, 3), 12, (4, 8), lookback=500)
    contexts, matches = features(data, spec)
    for start in (1, 600, 13_579):
        part_contexts, part_matches = features(data, spec, start)
        np.testing.assert_array_equal(part_contexts, contexts[start:])
        np.testing.assert_array_equal(part_matches, matches[start:])


def test_a_match_predicts_the_byte_after_the_last_occurrence_within_the_lookback() -> None:
    data = np.frombuffer(b"abcX....abcY..abcZ", np.uint8)
    _, matches = features(data, FeatureSpec((1,), 8, (3,), lookback=100))
    assert chr(matches[11, 0]) == "X"  # after the 2nd "abc": the 1st was followed by X
    assert chr(matches[17, 0]) == "Y"  # after the 3rd: the most recent earlier one, by Y
    assert matches[10, 0] == NONE  # the context ".ab" before position 10 never occurred
    _, near = features(data, FeatureSpec((1,), 8, (3,), lookback=7))
    assert near[11, 0] == NONE  # X lies 8 bytes before position 11: beyond a lookback of 7
    assert chr(near[17, 0]) == "Y"  # 6 bytes back


# ---- the byte model: exact integer arithmetic ----


def _python_logits(
    model: byte_model.ByteModel, contexts: list[int], matches: list[int]
) -> list[int]:
    """The integer network of byte_model's docstring in Python integers (no rounding at all)."""
    a = model.arrays
    rows = np.concatenate([[0], np.cumsum(model.config.table_rows)[:-1]])
    x = [
        int(v)
        for r, o in zip(contexts + matches, rows, strict=True)
        for v in a["embeddings"][r + o]
    ]
    hidden = []
    for j in range(model.config.hidden):
        acc = sum(xi * int(a["w1"][i, j]) for i, xi in enumerate(x)) + int(a["b1"][j])
        hidden.append(min(max(acc, 0) >> byte_model.FRACTION, 1 << 21))
    out = [
        (sum(h * int(a["w2"][i, k]) for i, h in enumerate(hidden)) + int(a["b2"][k]))
        >> (2 * byte_model.FRACTION - byte_model.LOG_BITS)
        for k in range(NONE + len(matches))
    ]
    z = out[:NONE]
    for j, predicted in enumerate(matches):
        if predicted != NONE:
            z[predicted] += out[NONE + j]
    return z


def test_the_byte_models_logits_are_the_exact_integer_arithmetic(
    byte_lm: models.ByteLanguageModel,
) -> None:
    model = byte_lm.model
    contexts, matches = features(np.frombuffer(corpus_bytes()[:3000], np.uint8), model.spec)
    batched = model.logits(contexts, matches)
    for t in (0, 5, 1234, 2999):  # rows with and without matches
        exact = _python_logits(model, contexts[t].tolist(), matches[t].tolist())
        assert batched[t].tolist() == exact
    single = [model.logits(contexts[t : t + 1], matches[t : t + 1])[0] for t in range(50)]
    np.testing.assert_array_equal(np.stack(single), batched[:50])  # a row alone = in a batch


def test_exp2_table_against_exact_fractions() -> None:
    table = byte_model.exp2_table()
    for f in (1, 777, 4095):  # round(2^(31 − f/4096)): check x^4096 brackets 2^(31·4096 − f)
        value = int(table[f])
        low, high = Fraction(2 * value - 1, 2), Fraction(2 * value + 1, 2)
        target = Fraction(2) ** (31 * 4096 - f)
        assert low**4096 <= target <= high**4096


def test_the_byte_model_survives_saving_and_loading(
    byte_lm: models.ByteLanguageModel, tmp_path: Path
) -> None:
    again = models.load(byte_lm.path)
    assert again.fingerprint() == byte_lm.fingerprint()
    (tmp_path / "m").mkdir()
    byte_lm.model.save(tmp_path / "m", {})
    arrays = dict(np.load(tmp_path / "m" / "weights.npz"))
    arrays["w1"] = arrays["w1"][:, :-1]
    np.savez(tmp_path / "m" / "weights.npz", **arrays)
    with pytest.raises(ValueError, match=r"weights.npz' does not match .*'w1' must be integers"):
        models.load(tmp_path / "m")


# ---- score: the total is the sum of the model's own −log2 q ----


def test_byte_model_score_is_the_sum_of_minus_log2_q(byte_lm: models.ByteLanguageModel) -> None:
    text = text_of(UNICODE + (STDLIB / "typing.py").read_text()[:3000])
    result = score.score(text, byte_lm, byte_lm.reading(None, None))
    stepper = byte_lm.stepper(byte_lm.reading(None, None), len(text.data))
    direct = 0.0
    for byte in text.data:  # one byte at a time, through the decoder's path
        u = stepper.weights()
        direct += math.log2(u.sum()) - math.log2(u[byte])
        stepper.push(byte)
    assert result.total_bits == pytest.approx(direct, rel=1e-9)
    figures = result.to_dict()
    assert figures["bytes"] == len(text.data)
    assert figures["characters"] == len(text.text)
    assert figures["bits_per_character"] * len(text.text) == pytest.approx(direct, rel=1e-9)
    assert figures["perplexity_per_token"] == pytest.approx(2 ** (direct / len(text.data)))
    nats = result.to_dict(math.e)
    assert nats["unit"] == "nats"
    assert nats["total_nats"] == pytest.approx(direct * math.log(2), rel=1e-12)


def _direct_bits(lm: Any, tokens: np.ndarray, context: int, stride: int) -> float:
    """Σ −log2 q of each token from a forward pass over exactly the tokens its window reads."""
    y = np.concatenate([[lm.start], tokens])
    total = 0.0
    for window in windows(len(y), context, stride):
        for i in range(window.first, window.end):
            ids = torch.from_numpy(y[None, window.begin : i])
            with torch.no_grad():
                logits = lm.model(input_ids=ids).logits[0, -1].double()
            total -= float(torch.log_softmax(logits, -1)[y[i]]) / math.log(2)
    return total


def test_transformers_score_is_the_sum_of_minus_log2_q_in_one_window(gpt2: Any) -> None:
    text = text_of(corpus_bytes()[1000:1060])
    tokens = gpt2.tokenize(text)
    assert len(tokens) < 63  # fits the 64 positions with the start token: one window
    result = score.score(text, gpt2, gpt2.reading(None, None), compressors=False)
    y = torch.tensor([[gpt2.start, *tokens.tolist()]])
    with torch.no_grad():
        log_q = torch.log_softmax(gpt2.model(input_ids=y).logits[0, :-1].double(), -1)
    direct = -float(log_q[torch.arange(len(tokens)), y[0, 1:]].sum()) / math.log(2)
    assert result.total_bits == pytest.approx(direct, rel=1e-6)
    assert result.total_bits == pytest.approx(_direct_bits(gpt2, tokens, 64, 32), rel=1e-6)


@pytest.mark.parametrize(("context", "stride"), [(16, 5), (9, 8), (12, 1)])
def test_transformers_windows_give_each_token_its_windows_context(
    gpt2: Any, context: int, stride: int
) -> None:
    text = text_of(corpus_bytes()[:400].decode())
    tokens = gpt2.tokenize(text)
    result = score.score(text, gpt2, gpt2.reading(context, stride), compressors=False)
    assert len(result.token_bits) == len(tokens)
    assert result.total_bits == pytest.approx(_direct_bits(gpt2, tokens, context, stride), rel=1e-6)


# ---- compress and decompress ----


CODED = {
    "ascii": corpus_bytes()[:2500],
    "utf-8": UNICODE.encode() * 3,
    "one byte": b"x",
    "one multi-byte character": "€".encode(),
}


@pytest.mark.parametrize("data", list(CODED.values()), ids=list(CODED))
def test_byte_model_round_trip_and_bound(
    byte_lm: models.ByteLanguageModel, data: bytes, tmp_path: Path
) -> None:
    _round_trip(byte_lm, data, tmp_path)


@pytest.mark.parametrize(
    "data", [CODED["ascii"][:300], CODED["utf-8"], b"x"], ids=["ascii", "utf-8", "one byte"]
)
def test_transformers_round_trip_and_bound(gpt2: Any, data: bytes, tmp_path: Path) -> None:
    _round_trip(gpt2, data, tmp_path, context=24, stride=7)  # several windows


def _round_trip(
    lm: models.LanguageModel, data: bytes, folder: Path, **reading: int
) -> coding.Summary:
    text = text_of(data)
    read = lm.reading(reading.get("context"), reading.get("stride"))
    summary = coding.compress(folder / "t.xent", lm, text, read)
    scored = score.score(text, lm, read, compressors=False)
    assert summary.model_bits == pytest.approx(scored.total_bits, rel=1e-6)
    assert summary.payload_bits <= coding.bound_bits(scored.total_bits, summary.tokens, lm.vocab)
    assert summary.payload_bits >= summary.quantised_bits - 1e-6  # no code beats its model
    assert summary.file_bytes == (folder / "t.xent").stat().st_size
    assert coding.decompress(folder / "t.xent", lm) == data
    return summary


def test_the_payload_is_within_a_fraction_of_a_bit_per_kilobyte_of_scores_bits(
    byte_lm: models.ByteLanguageModel, tmp_path: Path
) -> None:
    data = (STDLIB / "typing.py").read_bytes()[:30_000]
    summary = _round_trip(byte_lm, data, tmp_path)
    assert summary.payload_bits - summary.model_bits < 64 + 1e-3 * len(data)  # typical: ~1e-4


def test_decoding_a_file_one_byte_at_a_time_needs_no_batched_arithmetic(
    byte_lm: models.ByteLanguageModel, tmp_path: Path
) -> None:
    # the encoder's weights come from the batched path, the decoder's from one row at a time:
    # they must be the same integers, so the predictions' fingerprint matches
    data = (STDLIB / "typing.py").read_bytes()[5000:9000]
    read = byte_lm.reading(None, None)
    batched = np.concatenate(
        list(byte_lm.coding_weights(np.frombuffer(data, np.uint8).astype(np.int64), read))
    )
    stepper = byte_lm.stepper(read, len(data))
    for t, byte in enumerate(data[:400]):
        np.testing.assert_array_equal(stepper.weights(), batched[t])
        stepper.push(byte)


# ---- refusals: never wrong text ----


@pytest.fixture(scope="module")
def packed(byte_lm: models.ByteLanguageModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("packed") / "t.xent"
    coding.compress(path, byte_lm, text_of(corpus_bytes()[:2000]), byte_lm.reading(None, None))
    return path


def test_another_model_is_refused(packed: Path, tmp_path: Path) -> None:
    other = make_byte_model(tmp_path / "other", seed=1, steps=5)
    with pytest.raises(ValueError, match=r"t.xent' was compressed with another model"):
        coding.decompress(packed, other)


def test_another_context_is_refused(byte_lm: models.ByteLanguageModel, packed: Path) -> None:
    with pytest.raises(
        ValueError, match=r"compressed with --context 4096; decoding it with --context 100"
    ):
        coding.decompress(packed, byte_lm, context=100)
    with pytest.raises(ValueError, match=r"--stride is for Hugging Face models|`--stride` is for"):
        coding.decompress(packed, byte_lm, stride=3)


@pytest.mark.parametrize("damage", ["flip a bit", "truncate", "extend"])
def test_damaged_files_are_refused(
    byte_lm: models.ByteLanguageModel, packed: Path, tmp_path: Path, damage: str
) -> None:
    data = bytearray(packed.read_bytes())
    if damage == "flip a bit":
        data[len(data) // 2] ^= 0x10
    elif damage == "truncate":
        del data[-5:]
    else:
        data += b"\0"
    (tmp_path / "d.xent").write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"d.xent' is damaged: its SHA-256 checksum"):
        coding.decompress(tmp_path / "d.xent", byte_lm)


def _forged(packed: Path, target: Path, **changes: Any) -> Path:
    """The file with its header changed and its checksum made to match again."""
    header, words = coding.read(packed)
    container.write(target, coding.MAGIC, {**header, **changes}, words)
    return target


def test_forged_files_never_give_wrong_text(
    byte_lm: models.ByteLanguageModel, packed: Path, tmp_path: Path
) -> None:
    header, _ = coding.read(packed)
    other_predictions = _forged(packed, tmp_path / "p.xent", predictions_sha256="0" * 64)
    with pytest.raises(ValueError, match=r"not bit-identical to those at compression"):
        coding.decompress(other_predictions, byte_lm)
    other_text = _forged(packed, tmp_path / "t.xent", text_sha256="f" * 64)
    with pytest.raises(ValueError, match=r"the decoded text fails its checksum"):
        coding.decompress(other_text, byte_lm)
    fewer = _forged(packed, tmp_path / "n.xent", tokens=header["tokens"] - 1)
    with pytest.raises(ValueError, match=r"not bit-identical|fails its checksum"):
        coding.decompress(fewer, byte_lm)
    with pytest.raises(ValueError, match=r"field 'tokens' must be a whole number ≥ 1; got 0"):
        coding.read(_forged(packed, tmp_path / "z.xent", tokens=0))
    with pytest.raises(ValueError, match=r"has 10,000,000 tokens for 2,000 bytes"):
        coding.read(_forged(packed, tmp_path / "b.xent", tokens=10_000_000))


def test_a_labels_file_is_not_a_text_file(tmp_path: Path) -> None:
    from crossent.coding.labels import MAGIC

    (tmp_path / "l.xent").write_bytes(MAGIC + b"\0" * 64)
    with pytest.raises(ValueError, match=r"is not a crossent compressed-text file"):
        coding.read(tmp_path / "l.xent")


# ---- input ----


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"'t.txt' is empty"),
        (b"abc\0def", r"'t.txt' is a binary file, not text: it holds a NUL byte at offset 3"),
        (b"caf\xe9", r"'t.txt' is not UTF-8 text: byte 0xe9 at offset 3"),
    ],
)
def test_text_that_is_not_text_is_refused(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        text_of(data)


def test_the_compressed_header_says_what_decoding_needs(packed: Path) -> None:
    header, _ = coding.read(packed)
    assert header["model_kind"] == byte_model.KIND
    assert header["stride"] is None
    assert header["text_sha256"] == hashlib.sha256(corpus_bytes()[:2000]).hexdigest()
    assert set(header["encoded_with"]) >= {"crossent", "numpy"}
    json.dumps(header)  # plain JSON


@pytest.mark.parametrize("which", ["byte model", "gpt2"])
def test_the_surprisal_page_holds_the_whole_text_and_every_tokens_bits(
    byte_lm: models.LanguageModel, gpt2: models.LanguageModel, which: str
) -> None:
    import html as escaping
    import re

    from crossent.text import html

    lm = byte_lm if which == "byte model" else gpt2
    text = text_of("<b>&" + UNICODE * 2)
    result = score.score(text, lm, lm.reading(None, None), compressors=False)
    page = html.render(result, lm.token_spans(text, lm.tokenize(text)))
    shown = re.search(r"<pre>(.*)</pre>", page, re.DOTALL).group(1)  # type: ignore[union-attr]
    assert escaping.unescape(re.sub(r"<[^>]+>", "", shown)) == text.text
    titles = [float(b) for b in re.findall(r'title="([\d.]+) bits"', shown)]
    assert sum(titles) == pytest.approx(result.total_bits, abs=0.005 * len(titles))


def test_training_keeps_the_model_with_the_fewest_held_out_bits() -> None:
    data = np.frombuffer(corpus_bytes()[:1500], np.uint8)  # so little that it is memorised
    held = np.frombuffer((STDLIB / "typing.py").read_bytes()[:2000], np.uint8)
    options = TrainOptions(steps=60, batch_size=256, learning_rate=0.05, eval_seconds=0.0)
    trained = train(data, held, TINY, options)
    held_bits = [h["held_out_bits_per_byte"] for h in trained.history]
    assert len(held_bits) == 60
    assert held_bits[-1] > min(held_bits) + 0.5  # held-out bits fell, then rose again
    assert trained.kept["held_out_bits_per_byte"] == min(held_bits)
    lm = models.ByteLanguageModel(Path("kept"), trained.model)
    rounded = score.score(text_of(held.tobytes()), lm, lm.reading(None, None), compressors=False)
    bits = rounded.total_bits / len(held)
    assert bits == pytest.approx(min(held_bits), abs=2e-3)  # the float model, rounded
    last = train(data, held, TINY, TrainOptions(steps=3, eval_seconds=0.0, keep_best=False))
    assert last.kept is last.history[-1]
