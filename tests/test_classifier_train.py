"""SGD on the NLL: the three equal objectives take the same steps; options; saving a model."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from crossent.classifier import model as saved_model
from crossent.classifier.data import bundled, split
from crossent.classifier.model import ModelCard, SoftmaxClassifier, standardisation
from crossent.classifier.options import OBJECTIVES
from crossent.classifier.train import SGDOptions, objective_nats, train


def build(hidden: list[int], seed: int = 0) -> tuple[SoftmaxClassifier, np.ndarray, np.ndarray]:
    data = bundled("wine")
    mean, scale = standardisation(data.features)
    card = ModelCard(data.classes, data.feature_names, data.target, hidden, mean, scale)
    return SoftmaxClassifier(card, seed=seed), data.features, data.labels


def trajectory(objective: str, hidden: list[int]) -> list[torch.Tensor]:
    """The parameters after every SGD step, flattened into one vector each."""
    model, features, labels = build(hidden)
    steps: list[torch.Tensor] = []

    def record(*_: object) -> None:
        steps.append(torch.cat([p.detach().flatten().clone() for p in model.parameters()]))

    options = SGDOptions(epochs=3, batch_size=16, objective=objective, learning_rate=0.05)  # type: ignore[arg-type]
    train(model, features, labels, options, on_step=record)
    return steps


@pytest.mark.parametrize("hidden", [[], [8]], ids=["linear", "mlp"])
def test_nll_cross_entropy_and_kl_take_the_same_steps(hidden: list[int]) -> None:
    """docs/theory.md §5: H(y) of a one-hot y is 0, so NLL, H(y, ŷ) and D(y ‖ ŷ) have one minimiser,
    and SGD from the same seed follows the same path with each (to float32 rounding)."""
    paths = {objective: trajectory(objective, hidden) for objective in OBJECTIVES}
    reference = paths["nll"]
    assert len(reference) == 3 * math.ceil(178 / 16)
    assert not torch.equal(reference[0], reference[-1])  # the parameters did move
    for objective in ("cross-entropy", "kl"):
        for step, (mine, theirs) in enumerate(zip(paths[objective], reference, strict=True)):
            torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6, msg=f"step {step}")


def test_objectives_equal_torchs_cross_entropy_and_gradients() -> None:
    logits = torch.randn(7, 5, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 4, 2, 2, 1, 3, 0])
    expected = torch.nn.functional.cross_entropy(logits, labels)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    for objective in OBJECTIVES:
        loss = objective_nats(objective, logits, labels)  # type: ignore[arg-type]
        (grad,) = torch.autograd.grad(loss, logits)
        torch.testing.assert_close(loss, expected)
        torch.testing.assert_close(grad, expected_grad)


def test_training_lowers_the_held_out_loss_and_is_reproducible() -> None:
    data = bundled("iris")
    train_part, test_part = split(data, 0.3, seed=0)
    histories = []
    for _ in range(2):
        mean, scale = standardisation(train_part.features)
        card = ModelCard(data.classes, data.feature_names, "target", [16], mean, scale)
        model = SoftmaxClassifier(card, seed=1)
        options = SGDOptions(epochs=15, seed=1)
        held_out = (test_part.features, test_part.labels)
        histories.append(
            train(model, train_part.features, train_part.labels, options, held_out=held_out)
        )
    first, second = histories
    assert first.held_out_bits == second.held_out_bits
    assert first.held_out_bits[-1] < 0.5 * first.held_out_bits[0]
    assert len(first.train_bits) == 15


def test_weight_decay_applies_to_weights_not_biases() -> None:
    """One full-batch step: decay λ moves W by −lr·λ·W more than no decay, and b not at all."""
    after = {}
    for decay in (0.0, 0.5):
        model, features, labels = build([])
        start = model.network[0].weight.detach().clone()
        options = SGDOptions(
            epochs=1,
            batch_size=len(labels),
            momentum=0.0,
            weight_decay=decay,
            schedule="constant",
            learning_rate=0.1,
        )
        train(model, features, labels, options)
        after[decay] = (model.network[0].weight.detach(), model.network[0].bias.detach())
    torch.testing.assert_close(after[0.5][0] - after[0.0][0], -0.1 * 0.5 * start)
    torch.testing.assert_close(after[0.5][1], after[0.0][1], rtol=0, atol=0)


def test_save_and_load_give_the_same_predictions(tmp_path: Path) -> None:
    model, features, labels = build([4], seed=2)
    train(model, features, labels, SGDOptions(epochs=2))
    saved_model.save(model, tmp_path)
    loaded = saved_model.load(tmp_path)
    assert loaded.card == model.card
    np.testing.assert_array_equal(loaded.log_probs(features), model.log_probs(features))


def test_loading_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"is not a crossent run: it has no model\.json"):
        saved_model.load(tmp_path)


def test_a_constant_feature_keeps_scale_one() -> None:
    mean, scale = standardisation(np.array([[1.0, 5.0], [3.0, 5.0]]))
    assert (mean, scale) == ([2.0, 5.0], [1.0, 1.0])


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("learning_rate", 0.0, r"`learning_rate` must be a finite number > 0; got 0.0"),
        ("learning_rate", math.nan, r"`learning_rate` must be a finite number > 0; got nan"),
        ("momentum", 1.0, r"`momentum` must be in \[0, 1\); got 1.0"),
        ("weight_decay", -1e-3, r"`weight_decay` must be a finite number ≥ 0; got -0.001"),
        ("epochs", 0, r"`epochs` must be a finite number > 0; got 0"),
        ("batch_size", -2, r"`batch_size` must be a finite number > 0; got -2"),
        ("objective", "mse", r"`objective` must be one of \('nll', 'cross-entropy', 'kl'\)"),
        ("schedule", "step", r"`schedule` must be one of \('constant', 'cosine'\)"),
    ],
)
def test_bad_options_are_named(field: str, value: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SGDOptions(**{field: value})  # type: ignore[arg-type]
