"""Data-parallel training on 2 and 4 gloo processes gives the single process's numbers.

The batch NLL is the sum of the parts' sums (docs/theory.md §6), so the losses reported at every
step and epoch, the held-out losses and the trained weights must equal those of one process
on the same data and seed, up to float rounding (the sums are added in another order).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from crossent.classifier.data import bundled, split
from crossent.classifier.model import ModelCard, SoftmaxClassifier, standardisation
from crossent.classifier.parallel import train_data_parallel
from crossent.classifier.train import History, SGDOptions, train
from crossent.cli import main

pytestmark = pytest.mark.timeout(300)  # even if the launcher's own timeouts failed

ROWS = 182  # batches of 30, then one of 2: with 4 processes, two ranks get no example of it


@pytest.fixture(scope="module")
def digits() -> tuple[ModelCard, tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    data = bundled("digits")
    train_part, held_out = split(data, 0.25, 0)
    mean, scale = standardisation(train_part.features)
    card = ModelCard(data.classes, data.feature_names, data.target, [16], mean, scale)
    return (
        card,
        (train_part.features[:ROWS], train_part.labels[:ROWS]),
        (held_out.features, held_out.labels),
    )


def fit(digits, processes: int, objective: str) -> tuple[SoftmaxClassifier, History, list]:
    card, training, held_out = digits
    options = SGDOptions(epochs=3, batch_size=30, objective=objective)  # type: ignore[arg-type]
    model = SoftmaxClassifier(card, seed=options.seed)
    steps: list[tuple] = []
    kwargs = {"held_out": held_out, "on_step": lambda *step: steps.append(step)}
    if processes == 1:
        history = train(model, *training, options, **kwargs)
    else:
        history = train_data_parallel(model, *training, options, processes=processes, **kwargs)
    return model, history, steps


@pytest.mark.parametrize("processes", [2, 4])
@pytest.mark.parametrize("objective", ["nll", "kl"])
def test_the_numbers_are_the_single_process_ones(digits, processes: int, objective: str) -> None:
    one_model, one_history, one_steps = fit(digits, 1, objective)
    model, history, steps = fit(digits, processes, objective)
    np.testing.assert_allclose(history.train_bits, one_history.train_bits, rtol=1e-5)
    np.testing.assert_allclose(history.held_out_bits, one_history.held_out_bits, rtol=1e-5)
    assert [s[:3] for s in steps] == [s[:3] for s in one_steps]  # epoch, step, steps
    np.testing.assert_allclose([s[3] for s in steps], [s[3] for s in one_steps], rtol=1e-5)
    for name, tensor in one_model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], tensor, rtol=1e-4, atol=1e-5)


def test_the_command_line_trains_on_two_processes_to_the_same_report(tmp_path: Path) -> None:
    quick = ["--epochs", "3", "--no-reference", "--dataset", "iris"]
    assert main(["train", *quick, "--out", str(tmp_path / "one")]) == 0
    assert main(["train", *quick, "--nproc", "2", "--out", str(tmp_path / "two")]) == 0
    one, two = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("one", "two"))
    assert two["settings"]["processes"] == 2
    np.testing.assert_allclose(
        two["training"]["train_bits"], one["training"]["train_bits"], rtol=1e-5
    )
    for key in ("total_nll_bits", "mean_nll_bits", "accuracy"):
        np.testing.assert_allclose(two["held_out"][key], one["held_out"][key], rtol=1e-5)


@pytest.mark.parametrize("value", ["0", "-2", "two", "257"])
def test_nproc_must_be_a_sensible_count(capsys: pytest.CaptureFixture[str], value: str) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--nproc", value])
    assert f"must be a whole number from 1 to 256; got {value!r}" in capsys.readouterr().err


def test_under_torchrun_each_rank_trains_and_rank_0_writes_the_same_run(tmp_path: Path) -> None:
    """`torchrun --nproc-per-node 2 -m crossent train`: the processes exist already."""
    quick = ["--epochs", "3", "--no-reference", "--dataset", "iris"]
    assert main(["train", *quick, "--out", str(tmp_path / "one")]) == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", "-m", "crossent", "train", *quick]
    command += ["--out", str(tmp_path / "two")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "rank 0 of 2" in done.stdout
    assert done.stdout.count("run folder:") == 1  # rank 1 says nothing
    one, two = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("one", "two"))
    np.testing.assert_allclose(
        two["training"]["train_bits"], one["training"]["train_bits"], rtol=1e-5
    )
    np.testing.assert_allclose(
        two["held_out"]["total_nll_bits"], one["held_out"]["total_nll_bits"], rtol=1e-5
    )


def test_nproc_under_torchrun_is_refused(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["train", "--nproc", "2"]) == 2
    assert "under torchrun leave it out" in capsys.readouterr().err
