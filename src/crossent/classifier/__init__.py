"""The softmax classifier of docs/theory.md §1, trained by SGD on the NLL and scored in bits.

Data flows one way: :mod:`~crossent.classifier.data` (tables in, checked arrays out) →
:mod:`~crossent.classifier.model` (linear or MLP logits) → :mod:`~crossent.classifier.train`
(minibatch SGD on nll / cross-entropy / kl) → :mod:`~crossent.classifier.evaluate` (NLL in
bits, decomposition, calibration) → :mod:`~crossent.classifier.run` (the run folder).
"""

from crossent._extras import needs

with needs("crossent.classifier"):
    from crossent.classifier.data import LabelledData, bundled, labelled, read_table, split
    from crossent.classifier.evaluate import Report, Scorecard
    from crossent.classifier.model import ModelCard, SoftmaxClassifier, load, save
    from crossent.classifier.predictions import predict_batches, score_file
    from crossent.classifier.run import Run, fit, write
    from crossent.classifier.train import History, SGDOptions, train

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
