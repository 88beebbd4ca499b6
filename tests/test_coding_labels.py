"""Labels range-coded under per-example predictions: exact round trips, size = NLL, safety."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from crossent.classifier.data import bundled
from crossent.classifier.model import ModelCard, SoftmaxClassifier, standardisation
from crossent.classifier.train import SGDOptions, train
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
    header["format_version"] = 2
    encoded = json.dumps(header).encode()
    body = MAGIC + struct.pack("<I", len(encoded)) + encoded + words.astype("<u4").tobytes()
    path.write_bytes(body + hashlib.sha256(body).digest())
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
    with pytest.raises(ValueError, match="must be finite, ≥ 0 and not all 0; row 0 is not"):
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
def test_the_compiled_quantiser_gives_numpys_frequencies_bit_for_bit(
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
def test_the_compiled_quantiser_refuses_what_numpy_refuses(bad: float) -> None:
    u = np.ones((5, 4))
    u[3, 2] = bad
    for quantised in (labels_module._quantised, labels_module._quantised_in_numpy):
        with pytest.raises(ValueError, match=r"must be finite, ≥ 0 and not all 0; row 3 is not"):
            quantised(u, None)
    with pytest.raises(ValueError, match=r"row 0 is not"):
        labels_module._quantised(np.zeros((2, 4)), None)


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
