"""The softmax classifier of docs/theory.md §1: ŷ = σ(z), z = network(standardised x).

The network is linear (multinomial logistic regression) or an MLP with ReLU hidden layers; its
output z holds the M logits and the softmax is applied by the loss (log σ(z) directly, which
never rounds a probability to 0 before taking its log).

A trained model lives in a folder as two files: ``model.pt`` (the weights, a plain
``state_dict``) and ``model.json`` (classes, feature names, the standardisation, the options).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

import crossent
from crossent._files import atomic_path

WEIGHTS = "model.pt"
CARD = "model.json"
# what torch.load raises on damaged bytes, depending on where the damage is
_DAMAGED_WEIGHTS = (
    RuntimeError,
    EOFError,
    ValueError,
    KeyError,
    IndexError,
    AttributeError,
    TypeError,
    OverflowError,
    MemoryError,
    pickle.UnpicklingError,
)


@dataclass(frozen=True)
class ModelCard:
    """Everything besides the weights that turns a table into predictions (model.json).

    Attributes:
        classes: the M labels as text, in the order of the logits.
        feature_names: the D feature columns the model reads, in order.
        target: the name of the label column.
        hidden: widths of the hidden layers; ``[]`` for a linear model.
        mean, scale: ``D`` numbers each: features are standardised as (x − mean) / scale.
        options: the training options, as recorded.
        version: the crossent version that trained it.

    >>> card = ModelCard(["a", "b"], ["x"], "y", hidden=[8], mean=[0.0], scale=[1.0])
    >>> SoftmaxClassifier(card).network
    Sequential(
      (0): Linear(in_features=1, out_features=8, bias=True)
      (1): ReLU()
      (2): Linear(in_features=8, out_features=2, bias=True)
    )
    """

    classes: list[str]
    feature_names: list[str]
    target: str
    hidden: list[int]
    mean: list[float]
    scale: list[float]
    options: dict[str, Any] = field(default_factory=dict)
    version: str = crossent.__version__


class SoftmaxClassifier(nn.Module):
    """Logits z = network((x − mean) / scale); the model is p(y | x, θ) = softmax(z).

    The network is linear, or an MLP with ReLU between the layers of ``card.hidden``
    (docs/theory.md §1).

    Args:
        card: the :class:`ModelCard`: classes, features, hidden widths, standardisation.
        seed: the seed of the initial weights (the same seed gives the same weights).

    >>> card = ModelCard(["a", "b", "c"], ["x0", "x1"], "y", [], [0.0, 0.0], [1.0, 1.0])
    >>> model = SoftmaxClassifier(card, seed=0)
    >>> np.exp(model.log_probs(np.array([[0.5, -1.0]]))).sum()   # one distribution per row
    np.float64(1.0)
    """

    mean: torch.Tensor
    scale: torch.Tensor

    def __init__(self, card: ModelCard, seed: int = 0) -> None:
        super().__init__()
        self.card = card
        widths = [len(card.feature_names), *card.hidden, len(card.classes)]
        layers: list[nn.Module] = []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)  # the initial weights depend on the seed only
            for width_in, width_out in itertools.pairwise(widths):
                layers += [nn.Linear(width_in, width_out), nn.ReLU()]
        self.network = nn.Sequential(*layers[:-1])  # no ReLU after the logits
        self.register_buffer("mean", torch.tensor(card.mean), persistent=False)
        self.register_buffer("scale", torch.tensor(card.scale), persistent=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, M)`` for raw (unstandardised) features ``(N, D)``.

        Args:
            features: ``(N, D)`` float32 tensor of raw features.
        """
        logits: torch.Tensor = self.network((features - self.mean) / self.scale)
        return logits

    @torch.no_grad()
    def log_probs(self, features: np.ndarray) -> np.ndarray:
        """log p(y | x) in nats, ``(N, M)`` float64: log-softmax of the logits taken in float64.

        Args:
            features: ``(N, D)`` raw features.
        """
        logits = self(torch.from_numpy(np.asarray(features, dtype=np.float32)))
        log_probs: np.ndarray = torch.log_softmax(logits.double(), dim=-1).numpy()
        return log_probs

    def exact_weights(self, features: np.ndarray) -> np.ndarray:
        """exp(z − max z) in float64 ``(N, M)``: unnormalised p(y | x), the same bits anywhere.

        Computed with elementwise NumPy float64 operations in a fixed order (no BLAS, no
        threads): row i depends on row i of ``features`` only, through the same sequence of
        correctly rounded operations, so the result does not depend on the batch size, the
        thread count or memory alignment. Entropy coding needs exactly this: the decoder
        must see the very probabilities the encoder used. It costs D multiply-adds over an
        (N, width) array per layer of input width D, slower than a matrix product.

        Args:
            features: ``(N, D)`` raw features.
        """
        x = (np.asarray(features, dtype=np.float64) - self.mean.double().numpy()) / (
            self.scale.double().numpy()
        )
        linears = [layer for layer in self.network if isinstance(layer, nn.Linear)]
        for position, layer in enumerate(linears):
            weight = layer.weight.detach().double().numpy()
            out = np.repeat(layer.bias.detach().double().numpy()[None, :], len(x), axis=0)
            for k in range(weight.shape[1]):
                out += x[:, k : k + 1] * weight[:, k]
            x = out if position == len(linears) - 1 else np.maximum(out, 0.0)
        weights: np.ndarray = np.exp(x - x.max(axis=1, keepdims=True))
        return weights


def standardisation(features: np.ndarray) -> tuple[list[float], list[float]]:
    """Mean and standard deviation of each column; a constant column keeps scale 1."""
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    scale[scale == 0] = 1.0
    return mean.tolist(), scale.tolist()


def save(model: SoftmaxClassifier, folder: Path) -> None:
    """Write ``model.pt`` and ``model.json`` into ``folder``.

    Args:
        model: the model to save.
        folder: an existing folder.

    >>> import tempfile
    >>> card = ModelCard(["a", "b"], ["x"], "y", [], [0.0], [1.0])
    >>> folder = tempfile.TemporaryDirectory()
    >>> save(SoftmaxClassifier(card, seed=3), Path(folder.name))
    >>> load(folder.name).card == card
    True
    >>> folder.cleanup()
    """
    torch.save(model.state_dict(), folder / WEIGHTS)
    with atomic_path(folder / CARD) as temporary:
        temporary.write_text(json.dumps(asdict(model.card), indent=2) + "\n")


def load(folder: str | Path) -> SoftmaxClassifier:
    """The model saved by :func:`save` in a run folder, ready to predict.

    A missing, damaged or mismatched file is a ValueError naming it, never a half-loaded model.

    Args:
        folder: a run folder (or any folder :func:`save` wrote into).

    >>> import tempfile
    >>> folder = tempfile.TemporaryDirectory()
    >>> load(folder.name)
    Traceback (most recent call last):
    ValueError: '...' is not a crossent run: it has no model.json
    >>> folder.cleanup()
    """
    folder = Path(folder)
    for name in (CARD, WEIGHTS):
        if not (folder / name).is_file():
            raise ValueError(f"{str(folder)!r} is not a crossent run: it has no {name}")
    card = _read_card(folder / CARD)
    state = _read_weights(folder / WEIGHTS)
    mismatch = _mismatch(_shapes(card), state)  # before the network is built: no allocation
    if mismatch is not None:
        raise ValueError(
            f"{str(folder / CARD)!r} does not match {str(folder / WEIGHTS)!r}: {mismatch}"
        )
    model = SoftmaxClassifier(card)
    model.load_state_dict(state)
    return model.eval()


def _read_card(path: Path) -> ModelCard:
    try:
        fields = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{str(path)!r} is damaged: it is not JSON ({error})") from None
    problem = _card_problem(fields)
    if problem is not None:
        raise ValueError(f"{str(path)!r} is not a crossent model card: {problem}")
    return ModelCard(**fields)


def _card_problem(fields: Any) -> str | None:
    """What is wrong with the fields of a model card, or None."""
    if not isinstance(fields, dict):
        return f"it holds a JSON {type(fields).__name__}, not an object"
    known = {f.name for f in dataclasses.fields(ModelCard)}
    required = known - {"options", "version"}
    if missing := sorted(required - fields.keys()):
        return f"it has no {missing[0]!r}"
    if unknown := sorted(fields.keys() - known):
        return f"it has an unknown field {unknown[0]!r}"
    names = fields["feature_names"]
    features = len(names) if isinstance(names, list) else None
    checks = [
        ("classes", _texts(fields["classes"], at_least=2), "at least 2 different texts"),
        ("feature_names", _texts(fields["feature_names"], at_least=1), "different texts"),
        ("target", isinstance(fields["target"], str), "a text"),
        ("hidden", _widths(fields["hidden"]), "positive whole numbers"),
        ("mean", _numbers(fields["mean"], features), "a number per feature"),
        (
            "scale",
            _numbers(fields["scale"], features, positive=True),
            "a positive number per feature",
        ),
        ("options", isinstance(fields.get("options", {}), dict), "an object"),
    ]
    for name, ok, rule in checks:
        if not ok:
            return f"{name!r} must be {rule}"
    return None


def _texts(value: Any, at_least: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) >= at_least
        and all(isinstance(v, str) for v in value)
        and len(set(value)) == len(value)
    )


def _widths(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    )


def _numbers(value: Any, count: int | None, *, positive: bool = False) -> bool:
    if not isinstance(value, list) or count is None or len(value) != count:
        return False
    return all(
        isinstance(v, (int, float)) and math.isfinite(v) and (v > 0 or not positive) for v in value
    )


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except _DAMAGED_WEIGHTS as e:
        reason = (
            str(e).strip().split(". ")[0].splitlines()[0] if str(e).strip() else type(e).__name__
        )
        raise ValueError(f"{str(path)!r} is damaged: torch cannot read it ({reason})") from None
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(f"{str(path)!r} is not a crossent model: it holds no weights by name")
    return state


def _shapes(card: ModelCard) -> dict[str, tuple[int, ...]]:
    """The shape of every weight of the network a card describes, by its state_dict name."""
    widths = [len(card.feature_names), *card.hidden, len(card.classes)]
    shapes: dict[str, tuple[int, ...]] = {}
    for layer, (width_in, width_out) in enumerate(itertools.pairwise(widths)):
        shapes[f"network.{2 * layer}.weight"] = (width_out, width_in)  # Linear, then ReLU
        shapes[f"network.{2 * layer}.bias"] = (width_out,)
    return shapes


def _mismatch(expected: dict[str, tuple[int, ...]], state: dict[str, torch.Tensor]) -> str | None:
    """How the weights differ from the network the card describes, or None."""
    if missing := sorted(expected.keys() - state.keys()):
        return f"the weights have no {missing[0]!r}"
    if extra := sorted(state.keys() - expected.keys()):
        return f"the weights have {extra[0]!r}, which the card's network has not"
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            return (
                f"{name!r} has shape {tuple(state[name].shape)} in the weights, {shape} by the card"
            )
    return None
