"""Damaged and forged files, drawn by hypothesis: decoding never returns labels that differ
from the original, and never raises anything but the documented ValueError.

Three kinds of damage: bytes flipped, cut or added anywhere (the checksum must catch them);
a header with a field changed and the checksum made to match again (a forgery: every field
is checked before it is used); and run folders whose model.pt or model.json is damaged
(decoding with them must refuse, or, if the damage changed nothing that matters, give the
original labels).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from crossent.classifier import model as saved_model
from crossent.classifier.data import bundled
from crossent.classifier.model import ModelCard, SoftmaxClassifier, standardisation
from crossent.cli import _labels
from crossent.coding.labels import MAGIC, compress, decompress, read

SETTINGS = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@pytest.fixture(scope="module")
def coded(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run folder (a model of iris), its features, the labels and their .xent file."""
    folder = tmp_path_factory.mktemp("coded")
    data = bundled("iris")
    mean, scale = standardisation(data.features)
    card = ModelCard(data.classes, data.feature_names, data.target, [], mean, scale)
    saved_model.save(SoftmaxClassifier(card, seed=1), folder)
    weights = _labels.weights_of(saved_model.load(folder), data.features)
    identity = _labels.identity(folder, data.features)
    compress(folder / "l.xent", data.labels, weights, identity=identity, chunk_rows=16)
    return {
        "folder": folder,
        "features": data.features,
        "labels": data.labels,
        "bytes": (folder / "l.xent").read_bytes(),
    }


def decoded_or_refused(coded: dict, path: Path, run: Path | None = None) -> None:
    """Decode ``path`` as the command line does; it must give the labels or a ValueError."""
    run = run or coded["folder"]
    try:
        model = saved_model.load(run)
        labels = decompress(
            path,
            _labels.weights_of(model, coded["features"]),
            identity=_labels.identity(run, coded["features"]),
            rows=len(coded["features"]),
        )
    except ValueError:
        return
    np.testing.assert_array_equal(labels, coded["labels"])


@SETTINGS
@given(st.data())
def test_damaged_bytes_are_refused(coded: dict, tmp_path: Path, data: st.DataObject) -> None:
    damaged = bytearray(coded["bytes"])
    for _ in range(data.draw(st.integers(1, 4), label="changes")):
        where = data.draw(st.integers(0, len(damaged)), label="where")
        kind = data.draw(st.sampled_from(["flip", "cut", "insert", "truncate"]), label="kind")
        if kind == "flip" and where < len(damaged):
            damaged[where] ^= data.draw(st.integers(1, 255), label="bits")
        elif kind == "cut":
            del damaged[where : where + data.draw(st.integers(1, 64), label="length")]
        elif kind == "insert":
            damaged[where:where] = data.draw(st.binary(min_size=1, max_size=64), label="bytes")
        else:
            del damaged[where:]
    path = tmp_path / "damaged.xent"
    path.write_bytes(bytes(damaged))
    decoded_or_refused(coded, path)


def header_and_payload(raw: bytes) -> tuple[dict, bytes]:
    body = raw[:-32]
    (length,) = struct.unpack_from("<I", body, len(MAGIC))
    start = len(MAGIC) + 4
    return json.loads(body[start : start + length]), body[start + length :]


def sealed(header: object, payload: bytes) -> bytes:
    """A file with this header and payload, and a checksum that matches them."""
    encoded = json.dumps(header).encode()
    body = MAGIC + struct.pack("<I", len(encoded)) + encoded + payload
    return body + hashlib.sha256(body).digest()


ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)
NUMBERS = st.sampled_from([-1, 0, 1, 2, 3, 7, 16, 149, 150, 151, 2**24, 2**31, 10**15, 2**63])


@SETTINGS
@given(st.data())
def test_forged_headers_are_refused(coded: dict, tmp_path: Path, data: st.DataObject) -> None:
    header, payload = header_and_payload(coded["bytes"])
    keys = st.sampled_from([*sorted(header), "extra"])
    for key in data.draw(st.lists(keys, min_size=1, max_size=3), label="fields"):
        value = data.draw(NUMBERS | ANY_JSON | st.just(None), label=key)
        if data.draw(st.booleans(), label="remove") and key in header:
            del header[key]
        else:
            header[key] = value
    if data.draw(st.booleans(), label="forge the payload"):
        payload = data.draw(st.binary(max_size=64), label="payload")
        header["payload_words"] = len(payload) // 4
        payload = payload[: 4 * (len(payload) // 4)]
    path = tmp_path / "forged.xent"
    path.write_bytes(sealed(header, payload))
    decoded_or_refused(coded, path)


def test_a_header_that_is_not_an_object_is_refused(coded: dict, tmp_path: Path) -> None:
    _, payload = header_and_payload(coded["bytes"])
    for header in ([1, 2], "text", 3, None):
        (tmp_path / "f.xent").write_bytes(sealed(header, payload))
        with pytest.raises(ValueError, match="is damaged: its header is not a JSON object"):
            read(tmp_path / "f.xent")


@SETTINGS
@given(
    name=st.sampled_from([saved_model.WEIGHTS, saved_model.CARD]),
    where=st.floats(0, 1),
    kind=st.sampled_from(["flip", "truncate", "empty"]),
    bits=st.integers(1, 255),
)
def test_a_damaged_run_folder_never_gives_other_labels(
    coded: dict,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    where: float,
    kind: str,
    bits: int,
) -> None:
    run = tmp_path_factory.mktemp("run")
    for file in (saved_model.WEIGHTS, saved_model.CARD):
        (run / file).write_bytes((coded["folder"] / file).read_bytes())
    damaged = bytearray((run / name).read_bytes())
    at = min(int(where * len(damaged)), len(damaged) - 1)
    if kind == "flip":
        damaged[at] ^= bits
    else:
        del damaged[at if kind == "truncate" else 0 :]
    (run / name).write_bytes(bytes(damaged))
    decoded_or_refused(coded, coded["folder"] / "l.xent", run)
