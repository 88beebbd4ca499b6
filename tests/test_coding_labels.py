"""Labels range-coded under per-example predictions: exact round trips, size = NLL, safety."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crossent.classifier.data import bundled
from crossent.classifier.model import ModelCard, SoftmaxClassifier, standardisation
from crossent.classifier.train import SGDOptions, train
from crossent.coding import _container as container
from crossent.coding import labels as labels_module
from crossent.coding.labels import MAGIC, compress, decompress, quantise, read

ID = {"model_sha256": "a" * 64}


def sample(rows: int, classes: int, seed: int, sharpness: float = 3.0):
    """Unnormalised weights exp(z − max z) and labels drawn from them."""
    rng = np.random.default_rng(seed)
    z = sharpness * rng.standard_normal((rows, classes))
    u = np.exp(z - z.max(axis=1, keepdims=True))
    p = u / u.sum(axis=1, keepdims=True)
    labels = np.minimum((p.cumsum(axis=1) < rng.random((rows, 1))).sum(axis=1), classes - 1)
    return u, labels


def round_trip(tmp_path: Path, u: np.ndarray, labels: np.ndarray, chunk_rows: int = 64):
    path = tmp_path / "labels.xent"
    summary = compress(path, labels, lambda a, b: u[a:b], identity=ID, chunk_rows=chunk_rows)
    decoded = decompress(path, lambda a, b: u[a:b], identity=ID)
    return summary, decoded, path


@settings(max_examples=30, deadline=None)
@given(
    classes=st.sampled_from([2, 3, 10, 257, 1000]),
    rows=st.integers(1, 400),
    sharpness=st.sampled_from([0.1, 3.0, 30.0]),
    seed=st.integers(0, 2**16),
)
def test_round_trip_and_size_within_64_bits_plus_1e3_per_label(
    tmp_path_factory: pytest.TempPathFactory, classes: int, rows: int, sharpness: float, seed: int
) -> None:
    u, labels = sample(rows, classes, seed, sharpness)
    summary, decoded, _ = round_trip(tmp_path_factory.mktemp("rt"), u, labels)
    np.testing.assert_array_equal(decoded, labels)
    assert summary.compressed_bits <= summary.quantised_nll_bits + 64 + 1e-3 * rows
    assert summary.compressed_bits >= summary.quantised_nll_bits - 32  # Kraft: no free lunch
    p = u / u.sum(axis=1, keepdims=True)
    nll = -np.log2(p[np.arange(rows), labels]).sum()
    assert summary.nll_bits == pytest.approx(nll, rel=1e-9)


@pytest.mark.parametrize(("classes", "rows"), [(50_000, 40), (2, 20_000)])
def test_round_trip_at_the_extremes(tmp_path: Path, classes: int, rows: int) -> None:
    u, labels = sample(rows, classes, seed=7)
    summary, decoded, _ = round_trip(tmp_path, u, labels, chunk_rows=max(1, (1 << 20) // classes))
    np.testing.assert_array_equal(decoded, labels)
    assert summary.overhead_bits <= 64 + 1e-3 * rows


def test_quantised_frequencies() -> None:
    u, _ = sample(500, 37, seed=3, sharpness=10.0)
    w = quantise(u)
    assert w.min() >= 1
    np.testing.assert_array_equal(w.sum(axis=1), 1 << 24)
    p = u / u.sum(axis=1, keepdims=True)
    assert np.abs(w / 2**24 - p).max() <= (37 + 1) / 2**24  # within a unit per class
    assert quantise(np.array([[1.0, 0.0, 0.0]])).min() == 1  # every class stays codable


def test_a_label_the_model_rules_out_still_codes_in_at_most_24_bits(tmp_path: Path) -> None:
    u = np.array([[1.0, 0.0], [0.5, 0.5]])
    labels = np.array([1, 0])
    summary, decoded, _ = round_trip(tmp_path, u, labels)
    np.testing.assert_array_equal(decoded, labels)
    assert summary.nll_bits == math.inf
    assert summary.quantised_nll_bits == pytest.approx(24 + 1, abs=1e-5)


def test_baseline_is_n_times_the_label_entropy(tmp_path: Path) -> None:
    u, labels = sample(1000, 4, seed=2)
    summary, _, _ = round_trip(tmp_path, u, labels)
    shares = np.bincount(labels, minlength=4) / 1000
    expected = -1000 * sum(s * math.log2(s) for s in shares if s > 0)
    assert summary.label_entropy_bits == pytest.approx(expected)


# ---- a damaged file, another model, other predictions: an error, never wrong labels ----


@pytest.fixture
def coded(tmp_path: Path):
    u, labels = sample(300, 5, seed=4)
    _, _, path = round_trip(tmp_path, u, labels)
    return u, path


def test_a_flipped_bit_is_caught(coded) -> None:
    u, path = coded
    data = bytearray(path.read_bytes())
    data[-40] ^= 0x01  # in the payload
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="is damaged: its SHA-256 checksum does not match"):
        decompress(path, lambda a, b: u[a:b], identity=ID)


def test_a_truncated_file_and_a_foreign_file_are_caught(coded, tmp_path: Path) -> None:
    u, path = coded
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(ValueError, match="is damaged"):
        decompress(path, lambda a, b: u[a:b], identity=ID)
    other = tmp_path / "other.xent"
    other.write_bytes(b"PK\x03\x04 not ours")
    with pytest.raises(ValueError, match="not a crossent compressed-labels file"):
        read(other)


def test_another_model_is_named(coded) -> None:
    u, path = coded
    with pytest.raises(ValueError, match="compressed with a different model"):
        decompress(path, lambda a, b: u[a:b], identity={"model_sha256": "b" * 64})


def test_predictions_whose_frequencies_differ_are_refused(coded) -> None:
    u, path = coded
    nudged = u.copy()
    nudged[150, 2] *= 1.001  # moves a few of the 2^24 frequency units of row 150
    with pytest.raises(ValueError, match="not bit-identical to those at compression"):
        decompress(path, lambda a, b: nudged[a:b], identity=ID)


def test_what_matters_is_the_quantised_model(coded) -> None:
    """A change below the 24-bit quantisation leaves the coded model and the labels as they were."""
    u, path = coded
    nudged = u.copy()
    nudged[150, 2] = np.nextafter(nudged[150, 2], 2.0)
    assert (quantise(nudged) == quantise(u)).all()
    decompress(path, lambda a, b: nudged[a:b], identity=ID)


def test_a_newer_format_version_is_refused(coded) -> None:
    u, path = coded
    header, words = read(path)
    forge(path, {**header, "format_version": 2}, words)
    with pytest.raises(ValueError, match="has format version 2; this crossent reads version 1"):
        decompress(path, lambda a, b: u[a:b], identity=ID)


def test_bad_labels_and_weights(tmp_path: Path) -> None:
    u, _ = sample(10, 3, seed=0)
    with pytest.raises(
        ValueError, match=r"labels must be class indices in \[0, 3\); got 3 at row 4"
    ):
        compress(
            tmp_path / "x",
            np.array([0, 1, 2, 0, 3, 0, 0, 0, 0, 0]),
            lambda a, b: u[a:b],
            identity=ID,
            chunk_rows=3,
        )
    bad = u.copy()
    bad[6] = np.nan
    with pytest.raises(ValueError, match="must be finite, ≥ 0 and not all 0; row 6 is not"):
        compress(
            tmp_path / "x", np.zeros(10, int), lambda a, b: bad[a:b], identity=ID, chunk_rows=6
        )
    with pytest.raises(ValueError, match="nothing to compress"):
        compress(tmp_path / "x", np.zeros(0, int), lambda a, b: u[a:b], identity=ID, chunk_rows=3)
    assert not list(tmp_path.iterdir())  # nothing half-written


# ---- the model's exact predictions: the same bits whatever the batch or thread count ----


def trained_model(hidden: list[int]) -> tuple[SoftmaxClassifier, np.ndarray]:
    data = bundled("wine")
    mean, scale = standardisation(data.features)
    card = ModelCard(data.classes, data.feature_names, data.target, hidden, mean, scale)
    model = SoftmaxClassifier(card, seed=0)
    train(model, data.features, data.labels, SGDOptions(epochs=3))
    return model, data.features


@pytest.mark.parametrize("hidden", [[], [16, 8]], ids=["linear", "mlp"])
def test_exact_weights_are_bit_identical_across_batches_and_threads(hidden: list[int]) -> None:
    model, features = trained_model(hidden)
    whole = model.exact_weights(features)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        pieces = [model.exact_weights(features[i : i + 7]) for i in range(0, len(features), 7)]
    finally:
        torch.set_num_threads(threads)
    buffer = np.empty(features.size + 1)[1:]  # the same values at another, unaligned address
    moved = buffer.reshape(features.shape)
    moved[...] = features
    assert whole.tobytes() == np.concatenate(pieces).tobytes()
    assert whole.tobytes() == model.exact_weights(moved).tobytes()
    probs = whole / whole.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.log(probs), model.log_probs(features), atol=1e-4)


def test_quantised_cuts_are_floors_by_hand() -> None:
    """Each cut is floor(U_k · (2^24 − M) / U_M), the last one exact, and a frequency is the
    difference of two cuts plus 1. For (1, 1, 1): (2^24 − 3) / 3 = 5,592,404.33…, so the cuts
    are 5,592,404, 11,184,808 and 16,777,213 (rounding to nearest would give 11,184,809)."""
    assert quantise(np.array([[1.0, 1.0, 1.0]])).tolist() == [[5592405, 5592405, 5592406]]
    # (3, 1): 3/4 of 2^24 − 2 = 12,582,910.5 → 12,582,910; frequencies 12,582,911 and 4,194,305
    assert quantise(np.array([[3.0, 1.0]])).tolist() == [[12582911, 4194305]]


@given(
    seed=st.integers(0, 2**31 - 1),
    rows=st.integers(1, 40),
    classes=st.sampled_from([2, 3, 10, 257, 5000]),
    zeros=st.floats(0.0, 0.9),
    spread=st.sampled_from([0.1, 3.0, 30.0]),
)
def test_the_quantiser_in_c_gives_numpys_frequencies_bit_for_bit(
    seed: int, rows: int, classes: int, zeros: float, spread: float
) -> None:
    """Files coded by either decode with the other: the same frequencies and fingerprints to
    the bit, weights of any scale, with zeros and a row of one nonzero weight."""
    if labels_module._quantise is None:
        pytest.skip("the compiled quantiser was not built")
    rng = np.random.default_rng(seed)
    u = np.exp(rng.normal(0.0, spread, (rows, classes)) - 5.0) * 10.0 ** rng.integers(-30, 30)
    u[rng.random((rows, classes)) < zeros] = 0.0
    u[0] = 0.0
    u[0, rng.integers(classes)] = 1e-300  # one class left: all the frequency but M − 1
    u[u.sum(axis=1) == 0, 0] = 1.0
    labels = np.argmax(u, axis=1).astype(np.int32)
    compiled = labels_module._quantised(u, labels)
    numpy = labels_module._quantised_in_numpy(u, labels)
    assert np.array_equal(compiled[0], numpy[0])
    assert compiled[1] == numpy[1]
    assert compiled[2] == pytest.approx(numpy[2], rel=1e-9, abs=1e-9)
    assert compiled[3] == pytest.approx(numpy[3], rel=1e-12, abs=1e-9)


@pytest.mark.parametrize("bad", [-1e-9, math.nan, math.inf])
def test_the_quantiser_in_c_refuses_what_numpy_refuses(bad: float) -> None:
    u = np.ones((5, 4))
    u[3, 2] = bad
    for quantised in (labels_module._quantised, labels_module._quantised_in_numpy):
        with pytest.raises(ValueError, match=r"must be finite, ≥ 0 and not all 0; row 3 is not"):
            quantised(u, None)
    for quantised in (labels_module._quantised, labels_module._quantised_in_numpy):
        with pytest.raises(ValueError, match=r"row 0 is not"):
            quantised(np.zeros((2, 4)), None)


@pytest.mark.timeout(120)
def test_a_forked_child_quantises_on_threads_of_its_own() -> None:
    """The parent's quantiser threads do not exist in a forked child; a child that used the
    parent's pool would wait for ever."""
    import multiprocessing

    weights = np.random.default_rng(0).random((4096, 256)) + 0.01  # several threads' shares
    expected = quantise(weights)  # the parent's pool exists now
    with multiprocessing.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(quantise, (weights,)).get(timeout=60)
    assert np.array_equal(got, expected)


# ---- the quantiser's shares, its NumPy twin, and what it is given ----


@pytest.mark.parametrize("bad_rows", [[1], [70], [0, 70]])
def test_a_refused_row_is_named_by_its_place_in_the_whole_across_shares_and_chunks(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, bad_rows: list[int]
) -> None:
    """Rows 0–99 in chunks of 64 rows, each chunk's quantisation in shares of 16 weights on
    two threads: the first refused row is named as the whole's row, whichever share found it."""
    monkeypatch.setattr(labels_module, "_THREADS", 2)
    monkeypatch.setattr(labels_module, "_SHARE_ELEMENTS", 16)
    u, labels = sample(100, 4, seed=1)
    u[bad_rows] = -1.0
    expected = f"^predicted weights must be finite, ≥ 0 and not all 0; row {bad_rows[0]} is not$"
    with pytest.raises(ValueError, match=expected):
        compress(tmp_path / "x", labels, lambda a, b: u[a:b], identity=ID, chunk_rows=64)
    with pytest.raises(ValueError, match=expected):
        quantise(u)
    if len(bad_rows) == 1:  # decoding names the row as well
        good = u.copy()
        good[bad_rows] = 1.0
        path = tmp_path / "good.xent"
        compress(path, labels, lambda a, b: good[a:b], identity=ID, chunk_rows=64)
        with pytest.raises(ValueError, match=expected):
            decompress(path, lambda a, b: u[a:b], identity=ID)


def test_a_share_and_a_half_of_work_is_one_share(monkeypatch: pytest.MonkeyPatch) -> None:
    """24 × 4 weights over shares of 64: one share (a whole number of them, at least 1)."""
    monkeypatch.setattr(labels_module, "_SHARE_ELEMENTS", 64)
    u, _ = sample(24, 4, seed=2)
    monkeypatch.setattr(labels_module, "_THREADS", 1)
    alone = quantise(u)
    monkeypatch.setattr(labels_module, "_THREADS", 2)
    assert np.array_equal(quantise(u), alone)


def test_without_the_c_quantiser_numpy_codes_the_same_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    u, labels = sample(200, 6, seed=3)
    compiled, _, first = round_trip(tmp_path, u, labels)
    monkeypatch.setattr(labels_module, "_quantise", None)
    second = tmp_path / "numpy.xent"
    summary = compress(second, labels, lambda a, b: u[a:b], identity=ID, chunk_rows=64)
    assert second.read_bytes() == first.read_bytes()
    assert (summary.nll_bits, summary.quantised_nll_bits) == pytest.approx(
        (compiled.nll_bits, compiled.quantised_nll_bits), rel=1e-12
    )
    assert np.array_equal(decompress(first, lambda a, b: u[a:b], identity=ID), labels)
    u[70] = math.inf  # in the second chunk of 64 rows
    with pytest.raises(ValueError, match=r"^predicted weights .* row 70 is not$"):
        compress(tmp_path / "bad.xent", labels, lambda a, b: u[a:b], identity=ID, chunk_rows=64)


def test_weights_of_any_dtype_or_layout_are_read_as_float64(tmp_path: Path) -> None:
    """Lists of integers, float32 and a transposed (non-contiguous) array quantise as their
    float64 values do; frequencies are int64."""
    assert quantise([[2, 1, 1]]).tolist() == [[8388607, 4194304, 4194305]]
    assert quantise([[2, 1, 1]]).dtype == np.int64
    u, labels = sample(40, 5, seed=5)
    as_float32 = u.astype(np.float32)
    assert np.array_equal(quantise(as_float32), quantise(as_float32.astype(np.float64)))
    transposed = np.asfortranarray(u)
    assert np.array_equal(quantise(transposed), quantise(u))
    _, decoded, _ = round_trip(tmp_path, as_float32, labels)
    assert np.array_equal(decoded, labels)
    wide = labels.astype(np.int64)  # the labels' bits are counted from any integer dtype
    expected = labels_module._quantised_in_numpy(u, wide)
    assert labels_module._quantised(u, wide)[2:] == pytest.approx(expected[2:], rel=1e-12)


def test_a_label_of_weight_zero_costs_infinite_float_bits_without_a_warning() -> None:
    u = np.array([[1.0, 0.0, 1.0]])
    for quantised in (labels_module._quantised, labels_module._quantised_in_numpy):
        _, _, nll, bits = quantised(u, np.array([1], dtype=np.int32))
        assert nll == math.inf
        assert bits == 24.0  # the quantised model keeps 1/2^24 for it


def test_two_to_two_to_the_24_minus_1_classes() -> None:
    for classes in (1, 1 << 24):
        u = np.empty((1, classes))  # not read: the count is refused first
        with pytest.raises(
            ValueError, match=f"^coding needs 2 to 2\\^24 - 1 classes; got {classes}$"
        ):
            quantise(u)


def test_the_coder_frequencies_are_the_quantised_ones_minus_1() -> None:
    u, labels = sample(30, 7, seed=6)
    free, fingerprint = labels_module.coder_frequencies(u.tolist())
    assert np.array_equal(free + 1, quantise(u))
    assert free.dtype == np.float64
    assert fingerprint == labels_module._quantised(u, labels)[1]
    cuts = np.cumsum(free, axis=1)  # the fingerprint: each row's cuts summed, float64 bytes
    assert fingerprint == cuts.sum(axis=1).astype("<f8").tobytes()


# ---- compress's summary and every refusal of compress and decompress, word for word ----


def forge(path: Path, header: dict, words: np.ndarray | list[int]) -> None:
    """A file with ``header`` and ``words`` and a checksum that matches them: the container
    that compress writes, with any header."""
    container.write(path, MAGIC, header, np.asarray(words, dtype=np.uint32))


def refused(path: Path, u: np.ndarray, message: str, **options: object) -> None:
    """decompress(path) under ``u`` raises a ValueError of exactly ``message`` (the file's
    name first)."""
    expected = f"^{re.escape(repr(str(path)) + message)}$"
    with pytest.raises(ValueError, match=expected):
        decompress(path, lambda a, b: u[a:b], identity=ID, **options)  # type: ignore[arg-type]


def test_the_summary_counts_labels_classes_and_the_file(tmp_path: Path) -> None:
    u, labels = sample(120, 6, seed=7)
    labels[labels == 5] = 4  # class 5 never occurs: H(Y) over the classes that do
    summary, _, path = round_trip(tmp_path, u, labels, chunk_rows=1)
    assert (summary.labels, summary.classes) == (120, 6)
    assert summary.file_bytes == path.stat().st_size
    assert read(path)[0]["chunk_rows"] == 1


def test_weights_of_another_shape_are_refused(tmp_path: Path) -> None:
    u, labels = sample(10, 5, seed=8)
    cases = [
        (lambda a, b: u[a:b, :4] if a else u[a:b], "(4, 5); got (4, 4)"),  # classes change
        (lambda a, b: u[a : b - 1], "(4, M); got (3, 5)"),
        (lambda a, b: u[a:b, 0], "(4, M); got (4,)"),
    ]
    for weights, shapes in cases:
        with pytest.raises(
            ValueError, match=re.escape(f"predicted weights must have shape {shapes}")
        ):
            compress(tmp_path / "x", labels, weights, identity=ID, chunk_rows=4)
    assert not list(tmp_path.iterdir())


def test_decompress_refuses_word_for_word(coded, tmp_path: Path) -> None:
    u, path = coded
    refused(path, u, " holds 300 labels, but the data has 299 rows; use the data it was "
            "compressed with", rows=299)  # fmt: skip
    assert len(decompress(path, lambda a, b: u[a:b], identity=ID, rows=300)) == 300
    other = {"model_sha256": "b" * 64}
    with pytest.raises(ValueError, match=re.escape(
        f"{str(path)!r} was compressed with a different model (model_sha256 aaaaaaaaaaaa…, "
        "here bbbbbbbbbbbb…); use the same as at compression"
    ) + "$"):  # fmt: skip
        decompress(path, lambda a, b: u[a:b], identity=other)
    refused(path, u[:, :4], " holds labels of 5 classes; the model has 4")
    nudged = u.copy()
    nudged[150, 2] *= 1.001
    refused(path, nudged, ": the model's predictions here are not bit-identical to those at "
            "compression (another machine, library version or thread count?); refusing to "
            "return labels")  # fmt: skip


def test_a_forged_payload_is_refused_never_decoded_to_wrong_labels(coded) -> None:
    u, path = coded
    header, words = read(path)
    forge(path, {**header, "payload_words": 0}, [])  # 0 words is a valid header
    refused(path, u, ": the decoded labels fail their checksum; refusing to return them")
    forge(path, header, np.full_like(words, 0xFFFFFFFF))  # constriction asserts on these
    refused(path, u, " is damaged: its labels do not decode (Tried to decode from compressed "
            "data that is invalid for the employed entropy model.)")  # fmt: skip


@pytest.mark.parametrize(
    ("field", "value", "rule"),
    [
        ("labels", 0, "must be a whole number ≥ 1"),
        ("classes", 1 << 24, "must be a whole number in [2, 2^24)"),
        ("chunk_rows", 0, "must be a whole number ≥ 1"),
        ("payload_words", -1, "must be a whole number ≥ 0"),
        ("predictions_sha256", "A" * 64, "must be 64 hex digits"),
        ("labels_sha256", "ab", "must be 64 hex digits"),
    ],
)
def test_each_header_field_is_checked_word_for_word(
    coded, field: str, value: object, rule: str
) -> None:
    u, path = coded
    header, words = read(path)
    forge(path, {**header, field: value}, words)
    refused(path, u, f" is damaged: its header's field {field!r} {rule}; got {value!r:.40}")


def test_the_largest_class_count_passes_the_header(coded) -> None:
    """2^24 − 1 classes is a valid header: the model's 5 classes are what is refused."""
    u, path = coded
    header, words = read(path)
    forge(path, {**header, "classes": (1 << 24) - 1}, words)
    refused(path, u, " holds labels of 16777215 classes; the model has 5")


def test_without_constriction_both_ways_name_the_extra(
    coded, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import sys

    u, path = coded
    monkeypatch.setitem(sys.modules, "constriction", None)
    for what, call in (
        ("compress", lambda: compress(tmp_path / "y", np.zeros(3, int), lambda a, b: u[a:b],
                                      identity=ID, chunk_rows=3)),
        ("decompress", lambda: decompress(path, lambda a, b: u[a:b], identity=ID)),
    ):  # fmt: skip
        with pytest.raises(ImportError, match=re.escape(
            f"crossent.coding.{what} needs constriction, which is not installed: pip install "
            "'crossent[compress]'"
        )):  # fmt: skip
            call()


def test_nothing_to_compress_word_for_word(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^nothing to compress: no labels were given$"):
        compress(tmp_path / "x", np.zeros(0, int), lambda a, b: np.ones((b - a, 2)), identity=ID,
                 chunk_rows=3)  # fmt: skip


def test_a_labels_file_is_recognised_as_one(coded, tmp_path: Path) -> None:
    _, path = coded
    assert labels_module.recognise(path) is None
    other = tmp_path / "notes.txt"
    other.write_text("XENT but not ours")
    assert labels_module.recognise(other) == "is not a crossent compressed-labels file"
