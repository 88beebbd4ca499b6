"""The softmax classifier of docs/theory.md §1, trained by SGD on the NLL and scored in bits.

Data flows one way: :mod:`~crossent.classifier.data` (tables in, checked arrays out) →
:mod:`~crossent.classifier.model` (linear or MLP logits) → :mod:`~crossent.classifier.train`
(minibatch SGD on nll / cross-entropy / kl) → :mod:`~crossent.classifier.evaluate` (NLL in
bits, decomposition, calibration) → :mod:`~crossent.classifier.run` (the run folder).

The public names are imported on first use (each from its module, below), so that importing a
light submodule such as :mod:`~crossent.classifier.options` does not import torch.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from crossent._extras import MissingExtraError, absent, needs

if TYPE_CHECKING:
    from crossent.classifier.data import LabelledData, bundled, labelled, read_table, split
    from crossent.classifier.evaluate import Report, Scorecard
    from crossent.classifier.model import ModelCard, SoftmaxClassifier, load, save
    from crossent.classifier.options import SGDOptions
    from crossent.classifier.predictions import predict_batches, score_file
    from crossent.classifier.run import Run, fit, write
    from crossent.classifier.train import History, train

if (_missing := absent("classifier")) is not None:  # found without importing it
    raise MissingExtraError.of("crossent.classifier", _missing, "classifier")

_HOMES = {
    "LabelledData": "data", "bundled": "data", "labelled": "data", "read_table": "data",
    "split": "data", "Report": "evaluate", "Scorecard": "evaluate", "ModelCard": "model",
    "SoftmaxClassifier": "model", "load": "model", "save": "model",
    "predict_batches": "predictions", "score_file": "predictions", "Run": "run", "fit": "run",
    "write": "run", "History": "train", "SGDOptions": "options", "train": "train",
}  # fmt: skip
"""Each public name and the submodule it lives in."""

__all__ = [
    "History",
    "LabelledData",
    "ModelCard",
    "Report",
    "Run",
    "SGDOptions",
    "Scorecard",
    "SoftmaxClassifier",
    "bundled",
    "fit",
    "labelled",
    "load",
    "predict_batches",
    "read_table",
    "save",
    "score_file",
    "split",
    "train",
    "write",
]


def __getattr__(name: str) -> Any:
    """A public name, imported from its submodule the first time it is asked for; a missing
    optional dependency is an error naming the extra to install."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'crossent.classifier' has no attribute {name!r}")
    with needs("crossent.classifier"):
        module = importlib.import_module(f"crossent.classifier.{home}")
    value = getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


class _Package(types.ModuleType):
    """This package, where importing the submodule ``crossent.classifier.train`` (which the
    import system binds here by its name) leaves ``crossent.classifier.train`` the function."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "train" and isinstance(value, types.ModuleType):
            value = value.train
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
