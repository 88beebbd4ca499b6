"""What `compress` and `decompress` share: the model, the features, and their identity."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from crossent.classifier import model as saved_model
from crossent.classifier.data import feature_matrix, read_table
from crossent.classifier.model import SoftmaxClassifier
from crossent.coding.labels import Weights

CHUNK_ELEMENTS = 1 << 20  # rows × classes per chunk of predictions: about 8 MB of float64


def inputs(
    run_folder: Path, data: Path, target: str | None = None
) -> tuple[SoftmaxClassifier, pa.Table, np.ndarray]:
    """The trained model, the table of DATA and its features in the model's column order;
    the ``target`` column is read as text (labels stay exact)."""
    model = saved_model.load(run_folder)
    table = read_table(data, text_columns=[target] if target is not None else [])
    features = feature_matrix(table, model.card.feature_names, repr(str(data)))
    return model, table, np.ascontiguousarray(features)


def identity(run_folder: Path, features: np.ndarray) -> dict[str, str]:
    """SHA-256 of the model's two files and of the feature matrix (float64, row-major)."""
    model = hashlib.sha256()
    for name in (saved_model.CARD, saved_model.WEIGHTS):
        model.update((run_folder / name).read_bytes())
    table = hashlib.sha256(repr(features.shape).encode())
    table.update(features.astype("<f8").tobytes())
    return {"model_sha256": model.hexdigest(), "features_sha256": table.hexdigest()}


def weights_of(model: SoftmaxClassifier, features: np.ndarray) -> Weights:
    """``weights(start, stop)``: the model's exact float64 weights for those rows."""
    return lambda start, stop: model.exact_weights(features[start:stop])


def chunk_rows(model: SoftmaxClassifier) -> int:
    return max(1, CHUNK_ELEMENTS // len(model.card.classes))
