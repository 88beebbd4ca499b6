"""Information measures of discrete distributions (SEED.md §3–§6).

Two roles never trade places. The **target** is the truth: the distribution outcomes really
follow (the data, one-hot for an observed class). The **pred** is the model: the distribution the
code, or the classifier, was built for. In H(target, pred) = −Σ target · log pred the target
gives the weights and the pred sits inside the log, so every argument is a keyword that names its
role and its representation (``target_probs=``, ``pred_logits=``, ...); no pair of positional
arguments can be swapped by mistake.

Units: ``base=2`` (bits) is the default, since the article measures information in yes/no
questions; ``base=math.e`` gives nats, as PyTorch, SciPy and scikit-learn report; ``base=10``
gives hartleys. Values are computed in nats and divided by ln(base).

Arrays: NumPy arrays (and lists) in, NumPy out; torch tensors in, tensors out, on their device,
with autograd. Classes lie along ``dim`` (default the last axis); every other axis indexes
distributions. ``reduction`` is ``"none"`` (one value per distribution, the default), ``"sum"``
(the batch total, SEED.md §6: the NLL of a batch is the sum of per-example cross entropies) or
``"mean"`` (per example). float16 and bfloat16 inputs are computed, and returned, in float32.

Convention: 0 · log 0 = 0, in values and gradients, also for −inf logits and log-probabilities;
target mass on a class to which the model gives probability 0 costs +inf (never NaN, never a
clipped finite number). ``validate=False`` skips the checks on values for hot loops.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from crossent import _checks, _ops
from crossent._arrays import compute_precision, floating, to_output, to_tensor, wants_numpy
from crossent._checks import Reduction

ArrayLike = Any  # NumPy arrays, torch tensors, nested lists of numbers


@dataclass
class _Distributions:
    """A batch of distributions with the classes on the last axis, as log-probabilities."""

    log_probs: torch.Tensor
    given_probs: torch.Tensor | None = None
    _probs: torch.Tensor | None = field(default=None, init=False, repr=False)

    @property
    def probs(self) -> torch.Tensor:
        if self.given_probs is not None:
            return self.given_probs
        if self._probs is None:
            self._probs = _ops.exp(self.log_probs)
        return self._probs


def _from_probs(probs: torch.Tensor) -> _Distributions:
    return _Distributions(_ops.log(probs), probs)


def _from_log_probs(log_probs: torch.Tensor) -> _Distributions:
    return _Distributions(log_probs)


def _from_logits(logits: torch.Tensor) -> _Distributions:
    return _Distributions(torch.log_softmax(logits, dim=-1))


_READERS = {  # how each representation is checked, then read
    "log_probs": (_checks.check_log_probs, _from_log_probs),
    "probs": (_checks.check_probs, _from_probs),
    "logits": (_checks.check_logits, _from_logits),
}


def _representation(name: str) -> str:
    """'log_probs' for `pred_log_probs`, 'probs' for `target_probs` or `probs`, ..."""
    return next(kind for kind in _READERS if name == kind or name.endswith(f"_{kind}"))


def _read_distributions(name: str, value: ArrayLike, dim: int, validate: bool) -> _Distributions:
    """Check one argument (``pred_logits``, ...) and move its classes to the last axis."""
    tensor = floating(to_tensor(name, value))
    axis = _checks.check_dim(dim, name, tensor)
    tensor = tensor.movedim(axis, -1)
    _checks.check_num_classes(name, tensor)
    check, build = _READERS[_representation(name)]
    if validate:
        check(name, tensor, axis)
    return build(compute_precision(tensor))


def _read_index(name: str, value: ArrayLike, pred: _Distributions, validate: bool) -> torch.Tensor:
    """Check observed class indices against the predictions' rows and classes."""
    index = to_tensor(name, value)
    if validate or index.is_floating_point():
        _checks.check_index(name, index, pred.log_probs.shape[-1])
    _checks.check_same_shape(name, index, "pred_*", pred.log_probs, drop_last_of_b=True)
    return index.long()


_Target = _Distributions | torch.Tensor  # distributions, or observed class indices


def _split_roles(arguments: dict[str, Any]) -> dict[str, ArrayLike]:
    """The target_* and pred_* keyword arguments of a public function, by name."""
    return {k: v for k, v in arguments.items() if k.startswith(("target_", "pred_"))}


def _read_pair(
    given: dict[str, ArrayLike], dim: int, validate: bool, *, pred_optional: bool = False
) -> tuple[_Target, _Distributions]:
    """The true distributions (or observed classes) and the model's, checked against each other.

    With ``pred_optional`` and no pred given, the target is its own model (q = p).
    """
    preds = {k: v for k, v in given.items() if k.startswith("pred_")}
    targets = {k: v for k, v in given.items() if k.startswith("target_")}
    target_name, target_value = _checks.choose_one("true (target) distribution", **targets)
    if pred_optional and all(v is None for v in preds.values()):
        if target_name == "target_index":
            raise TypeError("`target_index` needs a model: pass one of `pred_probs=`, ...")
        itself = _read_distributions(target_name, target_value, dim, validate)
        return itself, itself
    pred_name, pred_value = _checks.choose_one("model (pred) distribution", **preds)
    pred = _read_distributions(pred_name, pred_value, dim, validate)
    if target_name == "target_index":
        return _read_index(target_name, target_value, pred, validate), pred
    target = _read_distributions(target_name, target_value, dim, validate)
    _checks.check_same_shape(target_name, target.log_probs, pred_name, pred.log_probs)
    return target, pred


def _entropy_nats(dist: _Distributions) -> torch.Tensor:
    """H(p) = −Σ p log p, in nats, one value per distribution."""
    return 0.0 - _ops.times_log(dist.probs, dist.log_probs).sum(dim=-1)  # +0.0, never -0.0


def _cross_entropy_nats(target: _Target, pred: _Distributions) -> torch.Tensor:
    """H(p, q) = −Σ p log q; for an observed class j (one-hot p) it is the NLL −log q_j."""
    if isinstance(target, torch.Tensor):
        return 0.0 - pred.log_probs.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    return 0.0 - _ops.times_log(target.probs, pred.log_probs).sum(dim=-1)


def _kl_divergence_nats(target: _Target, pred: _Distributions) -> torch.Tensor:
    """D(p ‖ q) = Σ p (log p − log q); equal to H(p, q) when p is one-hot, as H(p) = 0."""
    if isinstance(target, torch.Tensor):
        return _cross_entropy_nats(target, pred)
    return _ops.times_log(target.probs, target.log_probs - pred.log_probs).sum(dim=-1)


def _reduce(values: torch.Tensor, reduction: Reduction) -> torch.Tensor:
    if reduction == "sum":
        return values.sum()
    if reduction == "mean":
        if values.numel() == 0:
            raise ValueError(
                "`reduction='mean'` needs at least one distribution; got none "
                f"(the distributions have shape {tuple(values.shape)})"
            )
        return values.mean()
    return values


def _finish(nats: torch.Tensor, base: object, reduction: object, inputs: dict[str, Any]) -> Any:
    """Reduce over distributions, convert nats to ``base``'s unit, return in the input's kind."""
    unit = _checks.check_base(base)
    reduced = _reduce(nats, _checks.check_reduction(reduction))
    in_unit = reduced if unit == math.e else reduced / math.log(unit)
    return to_output(in_unit, wants_numpy(list(inputs.values())))


def entropy(
    probs: ArrayLike | None = None,
    *,
    log_probs: ArrayLike | None = None,
    logits: ArrayLike | None = None,
    base: float = 2,
    dim: int = -1,
    reduction: Reduction = "none",
    validate: bool = True,
) -> Any:
    """Entropy H(p) = −Σ_x p(x) log p(x): the expected cost of an outcome under its best code.

    In bits (``base=2``, the default) H(p) is the expected number of yes/no questions needed to
    identify an outcome drawn from p, with the questions chosen optimally for p (SEED.md §3).

    Args:
        probs: probabilities ``[..., num_classes]`` (classes along ``dim``); or give exactly one of
        log_probs: log-probabilities (−inf for probability 0), or
        logits: unnormalised scores z, with p = softmax(z) (−inf for probability 0).
        base: unit of the logarithm: 2 bits (default), ``math.e`` nats, 10 hartleys.
        dim: the class axis.
        reduction: ``"none"`` one entropy per distribution, ``"sum"`` or ``"mean"`` over them.
        validate: check the values (non-negative, rows summing to 1, ...) before computing.

    Returns:
        The entropy in the unit of ``base``: a NumPy value for NumPy input, a tensor for a tensor.

    >>> import numpy as np
    >>> float(entropy([1 / 2, 1 / 4, 1 / 4]))  # the article's example, in bits
    1.5
    >>> p = np.array([0.2, 0.3, 0.5])
    >>> bool(np.isclose(entropy(p, base=math.e), -np.sum(p * np.log(p))))
    True
    """
    name, value = _checks.choose_one(
        "distribution", probs=probs, log_probs=log_probs, logits=logits
    )
    dist = _read_distributions(name, value, dim, validate)
    return _finish(_entropy_nats(dist), base, reduction, {name: value})


def cross_entropy(
    *,
    target_probs: ArrayLike | None = None,
    target_log_probs: ArrayLike | None = None,
    target_logits: ArrayLike | None = None,
    target_index: ArrayLike | None = None,
    pred_probs: ArrayLike | None = None,
    pred_log_probs: ArrayLike | None = None,
    pred_logits: ArrayLike | None = None,
    base: float = 2,
    dim: int = -1,
    reduction: Reduction = "none",
    validate: bool = True,
) -> Any:
    """Cross entropy H(p, q) = −Σ_x p(x) log q(x): coding outcomes of p with the code built for q.

    The **target** p is the truth, the distribution outcomes really follow; the **pred** q is the
    model, the distribution the code (or classifier) was built for (SEED.md §4). In bits it is the
    expected number of yes/no questions when the questions are optimised for q but outcomes come
    from p. H(p, q) ≥ H(p), with equality iff q = p (Gibbs); it is not symmetric. With a one-hot
    target (``target_index``) it is the negative log-likelihood −log q_j of the observed class j.

    Args:
        target_probs, target_log_probs, target_logits: the true distributions p
            ``[..., num_classes]``; or
        target_index: observed classes ``[...]``, integers in [0, num_classes) (one-hot p).
            Give exactly one target.
        pred_probs, pred_log_probs, pred_logits: the model's distributions q
            ``[..., num_classes]``, same shape as the target. Give exactly one.
        base: unit: 2 bits (default), ``math.e`` nats, 10 hartleys.
        dim: the class axis.
        reduction: ``"none"`` one value per distribution (per example), ``"sum"`` the batch total
            (the NLL of a batch, SEED.md §6), ``"mean"`` the average per example.
        validate: check the values before computing.

    Returns:
        H(p, q) in the unit of ``base``; +inf where p puts mass on a class with q = 0.

    >>> f = [1 / 2, 1 / 4, 1 / 4]            # the code: '0', '10', '11'
    >>> g = [1 / 8, 1 / 8, 3 / 4]            # what outcomes really follow
    >>> float(cross_entropy(target_probs=g, pred_probs=f))   # bits per outcome
    1.875
    >>> float(cross_entropy(target_index=[0, 2], pred_probs=[f, f], reduction="sum"))
    3.0
    """
    given = _split_roles(locals())
    target, pred = _read_pair(given, dim, validate)
    return _finish(_cross_entropy_nats(target, pred), base, reduction, given)


def kl_divergence(
    *,
    target_probs: ArrayLike | None = None,
    target_log_probs: ArrayLike | None = None,
    target_logits: ArrayLike | None = None,
    target_index: ArrayLike | None = None,
    pred_probs: ArrayLike | None = None,
    pred_log_probs: ArrayLike | None = None,
    pred_logits: ArrayLike | None = None,
    base: float = 2,
    dim: int = -1,
    reduction: Reduction = "none",
    validate: bool = True,
) -> Any:
    """Kullback–Leibler divergence D(p ‖ q) = Σ_x p(x) log(p(x) / q(x)) = H(p, q) − H(p).

    The extra cost, per outcome, of coding outcomes of the true distribution p (the **target**)
    with the code built for the model q (the **pred**) instead of p's own code (SEED.md §5).
    D ≥ 0, with equality iff q = p; it is not symmetric. As a classifier loss its H(p) term does
    not depend on the model, so minimising D, H(p, q) or the NLL gives the same parameters.
    Computed term by term, Σ p (log p − log q), not as a difference of two sums, so that a
    small divergence keeps its relative precision.

    Args: as :func:`cross_entropy` (``target_index`` is a one-hot p, for which D = H(p, q)).

    Returns:
        D(p ‖ q) in the unit of ``base`` (bits by default); +inf where p puts mass on a class
        with q = 0.

    >>> g, f = [1 / 8, 1 / 8, 3 / 4], [1 / 2, 1 / 4, 1 / 4]
    >>> d = kl_divergence(target_probs=g, pred_probs=f)
    >>> bool(abs(d - (cross_entropy(target_probs=g, pred_probs=f) - entropy(g))) < 1e-12)
    True
    """
    given = _split_roles(locals())
    target, pred = _read_pair(given, dim, validate)
    return _finish(_kl_divergence_nats(target, pred), base, reduction, given)


def nll(
    *,
    target_index: ArrayLike,
    pred_probs: ArrayLike | None = None,
    pred_log_probs: ArrayLike | None = None,
    pred_logits: ArrayLike | None = None,
    base: float = 2,
    dim: int = -1,
    reduction: Reduction = "none",
    validate: bool = True,
) -> Any:
    """Negative log-likelihood −log q(y) of observed classes y under predicted distributions q.

    For one observation this is −Σ_j y_j log ŷ_j with y one-hot (SEED.md §2): exactly the cross
    entropy H(y, ŷ). For a batch of independent observations the NLL of the batch is the sum of
    the per-example values (``reduction="sum"``, SEED.md §6); ``"mean"`` gives it per example.

    Args:
        target_index: the observed classes ``[...]``, integers in [0, num_classes).
        pred_probs, pred_log_probs, pred_logits: the model's predicted distributions
            ``[..., num_classes]``; give exactly one.
        base, dim, reduction, validate: as :func:`cross_entropy`.

    Returns:
        The NLL in the unit of ``base``: bits by default (the length of an ideal code for the
        observed labels under the model), +inf for an observed class of probability 0.

    >>> float(nll(target_index=[1, 2], pred_probs=[[0.5, 0.25, 0.25]] * 2, reduction="sum"))
    4.0
    """
    given = _split_roles(locals())
    target, pred = _read_pair(given, dim, validate)
    return _finish(_cross_entropy_nats(target, pred), base, reduction, given)


def perplexity(
    *,
    target_probs: ArrayLike | None = None,
    target_log_probs: ArrayLike | None = None,
    target_logits: ArrayLike | None = None,
    target_index: ArrayLike | None = None,
    pred_probs: ArrayLike | None = None,
    pred_log_probs: ArrayLike | None = None,
    pred_logits: ArrayLike | None = None,
    dim: int = -1,
    reduction: Reduction = "mean",
    validate: bool = True,
) -> Any:
    """Perplexity base ** H: the number of equally likely outcomes with the same uncertainty.

    With a model (``pred_*``) it is base ** H(p, q) of the mean cross entropy, the usual
    perplexity of a model on data (``target_index`` for observed classes); without one it is
    base ** H(p) of the target itself. The value is the same in every base, as
    2 ** H_bits = e ** H_nats, so there is no ``base`` argument.

    Args:
        target_*, pred_*: as :func:`cross_entropy`; ``pred_*`` may be left out.
        reduction: ``"mean"`` (default) the perplexity of the whole batch, base ** (mean H), or
            ``"none"`` one perplexity per distribution. A sum of perplexities means nothing, so
            ``"sum"`` is refused.

    >>> float(perplexity(target_probs=[0.25, 0.25, 0.25, 0.25]))
    4.0
    """
    given = _split_roles(locals())
    target, pred = _read_pair(given, dim, validate, pred_optional=True)
    mode = _checks.check_reduction(reduction, allowed=("none", "mean"))
    nats = _reduce(_cross_entropy_nats(target, pred), mode)
    return to_output(nats.exp(), wants_numpy(list(given.values())))
