"""A run folder: everything one training run leaves behind, written whole or not at all.

model.pt, model.json   the trained model (see :mod:`crossent.classifier.model`)
metrics.json           the held-out report, the training history, the reference, the options
predictions.csv        the held-out split: label, then p(class) for every class
loss.png               training and held-out loss per epoch, bits per example
reliability.png        reliability diagram of the held-out predictions
per_class.png          mean cross entropy of each class's held-out examples
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

import crossent
from crossent._files import claimed
from crossent.classifier import model as saved_model
from crossent.classifier.data import LabelledData, split, write_table
from crossent.classifier.evaluate import Report, Scorecard, logistic_regression_reference
from crossent.classifier.model import ModelCard, SoftmaxClassifier, standardisation
from crossent.classifier.options import STALL_TIMEOUT, SGDOptions
from crossent.classifier.parallel import train_data_parallel
from crossent.classifier.predictions import prediction_batch
from crossent.classifier.train import EpochCallback, History, Step, train

METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
PLOTS = ("loss.png", "reliability.png", "per_class.png")
FILES = frozenset({saved_model.WEIGHTS, saved_model.CARD, METRICS, PREDICTIONS, *PLOTS})


@dataclass(frozen=True)
class Run:
    """What a training run produced: what ``crossent train`` writes into a run folder.

    Attributes:
        model: the trained :class:`~crossent.classifier.SoftmaxClassifier`.
        history: the loss per epoch, in bits per example.
        held_out: the held-out rows.
        held_out_log_probs: ``(N_held_out, M)`` the model's log-probabilities of them, nats.
        report: the held-out :class:`~crossent.classifier.Report` (NLL in bits, and more).
        reference: scikit-learn's LogisticRegression on the same split (``C``, its held-out
            ``mean_nll_bits`` and ``mean_nll_nats``, and the ``model``), or None.
        settings: the options of the run, as metrics.json records them.
        training_rows: how many rows were trained on.

    >>> from crossent.classifier import SGDOptions, bundled
    >>> run = fit(bundled("iris"), SGDOptions(epochs=3), hidden=[], reference=False)
    >>> run.training_rows, len(run.held_out.labels), run.held_out_log_probs.shape
    (112, 38, (38, 3))
    """

    model: SoftmaxClassifier
    history: History
    held_out: LabelledData
    held_out_log_probs: np.ndarray
    report: Report
    reference: dict[str, Any] | None
    settings: dict[str, Any]
    training_rows: int


def fit(
    data: LabelledData,
    options: SGDOptions,
    *,
    hidden: list[int],
    test_size: float = 0.25,
    bins: int = 10,
    reference: bool = True,
    processes: int = 1,
    data_parallel: bool = False,
    timeout: float = STALL_TIMEOUT,
    on_step: Step | None = None,
    on_epoch: EpochCallback | None = None,
) -> Run:
    """Split, standardise on the training part, train, and score the held-out part.

    With ``processes`` > 1 the training is data-parallel (:mod:`crossent.classifier.parallel`),
    and gives the single process's model up to float rounding; with ``data_parallel`` this
    process is one rank of a process group that already exists (under torchrun), and every
    rank calls ``fit`` alike. ``timeout`` is the seconds a process may go without finishing a
    step before it is named as hung (:func:`~crossent.classifier.parallel.train_data_parallel`).

    Args:
        data: the labelled table (:func:`~crossent.classifier.bundled`, ``labelled``).
        options: the :class:`~crossent.classifier.SGDOptions`.
        hidden: widths of the MLP's hidden layers; ``[]`` for a linear model.
        test_size: the fraction of rows held out, stratified.
        bins: confidence bins of the decomposition and the ECE.
        reference: also fit scikit-learn's LogisticRegression with the same L2 strength.
        processes: train data-parallel on this many local processes.
        data_parallel: train as one rank of an existing process group.
        timeout: seconds without a finished step before a process is named as hung.
        on_step, on_epoch: as in :func:`~crossent.classifier.train`.

    Returns:
        The :class:`Run`.

    >>> from crossent.classifier import SGDOptions, bundled
    >>> run = fit(bundled("wine"), SGDOptions(epochs=20), hidden=[16], reference=True)
    >>> run.report.mean_nll_bits < run.report.label_entropy_bits  # the features tell a lot
    True
    >>> sorted(run.reference)
    ['C', 'mean_nll_bits', 'mean_nll_nats', 'model']
    """
    train_part, held_out = split(data, test_size, options.seed)
    model = untrained(train_part, hidden, options)
    trainer: Any = functools.partial(train, data_parallel=data_parallel)
    if processes > 1:
        trainer = functools.partial(train_data_parallel, processes=processes, timeout=timeout)
    history = trainer(
        model,
        train_part.features,
        train_part.labels,
        options,
        held_out=(held_out.features, held_out.labels),
        on_step=on_step,
        on_epoch=on_epoch,
    )
    log_probs = model.log_probs(held_out.features)
    scorecard = Scorecard(data.classes, bins)
    scorecard.update(log_probs, held_out.labels)
    settings = {
        **asdict(options),
        "hidden": hidden,
        "test_size": test_size,
        "bins": bins,
        "processes": processes,
    }
    return Run(
        model,
        history,
        held_out,
        log_probs,
        scorecard.report(),
        _reference(train_part, held_out, model.card, options) if reference else None,
        settings,
        len(train_part.labels),
    )


def untrained(data: LabelledData, hidden: list[int], options: SGDOptions) -> SoftmaxClassifier:
    """The model :func:`fit` trains on ``data``: its input standardised by ``data``'s feature
    means and standard deviations, its weights initialised from ``options.seed``."""
    mean, scale = standardisation(data.features)
    card = ModelCard(
        data.classes, data.feature_names, data.target, hidden, mean, scale, options=asdict(options)
    )
    return SoftmaxClassifier(card, seed=options.seed)


def _reference(
    train_part: LabelledData, held_out: LabelledData, card: ModelCard, options: SGDOptions
) -> dict[str, Any]:
    """scikit-learn's LogisticRegression on the split, standardised as the model's input."""
    mean, scale = np.asarray(card.mean), np.asarray(card.scale)
    return logistic_regression_reference(
        ((train_part.features - mean) / scale, train_part.labels),
        ((held_out.features - mean) / scale, held_out.labels),
        len(train_part.classes),
        options.weight_decay,
    )


def write(run: Run, folder: Path, *, replace: bool = False) -> None:
    """Write the run folder; on any error nothing is left at ``folder``.

    An existing ``folder`` is an error unless ``replace``, and then only a run folder is
    replaced (see :func:`recognise`); the swap leaves the old or the new run at ``folder``
    whenever the process is killed.

    Args:
        run: what :func:`fit` returned.
        folder: the run folder to write: model.pt, model.json, metrics.json,
            predictions.csv and three PNG plots.
        replace: replace an existing run folder (never anything else).

    >>> import tempfile
    >>> from crossent.classifier import SGDOptions, bundled
    >>> run = fit(bundled("iris"), SGDOptions(epochs=2), hidden=[], reference=False)
    >>> folder = tempfile.TemporaryDirectory()
    >>> write(run, Path(folder.name) / "run")
    >>> sorted(p.name for p in (Path(folder.name) / "run").iterdir())[:3]
    ['loss.png', 'metrics.json', 'model.json']
    >>> folder.cleanup()
    """
    with claim(folder, replace=replace) as temporary:
        write_into(run, temporary)


def claim(
    folder: Path, *, replace: bool = False, option: str = "--out"
) -> contextlib.AbstractContextManager[Path]:
    """Claim the run folder ``folder`` (see :func:`crossent._files.claimed`): a context that
    yields the temporary folder to :func:`write_into`, and puts it at ``folder`` at its end."""
    return claimed(folder, folder=True, force=replace, option=option, recognise=recognise)


def write_into(run: Run, folder: Path) -> None:
    """Write the files of the run into the existing, empty ``folder``."""
    from crossent.classifier import plots  # matplotlib: only commands that draw import it

    saved_model.save(run.model, folder)
    (folder / METRICS).write_text(json.dumps(metrics(run), indent=2) + "\n")
    write_table(folder / PREDICTIONS, _predictions(run))
    plots.loss_curves(run.history, folder / PLOTS[0])
    plots.reliability_diagram(run.report, folder / PLOTS[1])
    plots.per_class_cross_entropy(run.report, folder / PLOTS[2])


def recognise(folder: Path) -> str | None:
    """None if ``folder`` is a run folder that ``--force`` may replace; else why it is not:
    it must hold a model card and nothing but the files a run writes."""
    names = sorted(entry.name for entry in folder.iterdir())
    others = [name for name in names if name not in FILES]
    if others:
        return f"is not a crossent run folder: it holds {others[0]!r}, which a run does not write"
    if saved_model.CARD not in names:
        return f"is not a crossent run folder: it has no {saved_model.CARD}"
    return None


def metrics(run: Run) -> dict[str, Any]:
    """The content of metrics.json: units are in the key names (``_bits``, ``_nats``)."""
    data = run.held_out
    return {
        "crossent_version": crossent.__version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "data": {
            "source": data.source,
            "target": data.target,
            "classes": data.classes,
            "features": data.feature_names,
            "training_rows": run.training_rows,
            "held_out_rows": len(data.labels),
        },
        "settings": run.settings,
        "held_out": run.report.to_dict(),
        "training": asdict(run.history),
        "reference": run.reference,
    }


def _predictions(run: Run) -> pa.Table:
    data = run.held_out
    labels = pa.array(np.asarray(data.classes)[data.labels])
    batch = prediction_batch(data.classes, run.held_out_log_probs, "probs", (data.target, labels))
    return pa.Table.from_batches([batch])
