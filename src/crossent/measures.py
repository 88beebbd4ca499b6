"""Information measures of discrete distributions (docs/theory.md §3–§6).

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
(the batch total, docs/theory.md §6: the NLL of a batch is the sum of per-example cross
entropies) or ``"mean"`` (per example). float16 and bfloat16 inputs are computed, and
returned, in float32.

Convention: 0 · log 0 = 0, in values and gradients, also for −inf logits and log-probabilities;
target mass on a class to which the model gives probability 0 costs +inf (never NaN, never a
clipped finite number). ``validate=False`` skips the checks on values for hot loops.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from crossent import _checks, _ops
from crossent._arrays import compute_precision, floating, to_output, to_tensor, wants_numpy
from crossent._checks import Reduction

ArrayLike = Any  # NumPy arrays, torch tensors, nested lists of numbers


class _Distributions:
    """A batch of distributions, classes on the last axis, as given: probabilities, their logs,
    or logits. The forms a measure needs are computed on first use, so it pays only for those.
    """

    def __init__(self, given: torch.Tensor, kind: str) -> None:
        self.given, self.kind, self.shape = given, kind, given.shape
        self._probs = given if kind == "probs" else None
        self._log_probs = given if kind == "log_probs" else None

    @property
    def given_as_probs(self) -> bool:
        return self.kind == "probs"

    @property
    def probs(self) -> torch.Tensor:
        if self._probs is None:
            self._probs = _ops.exp(self.log_probs)
        return self._probs

    @property
    def log_probs(self) -> torch.Tensor:
        if self._log_probs is None:
            given = self.given
            self._log_probs = _ops.log(given) if self.given_as_probs else given.log_softmax(-1)
        return self._log_probs

    def flat(self) -> _Distributions:
        """The same distributions as one (rows, classes) matrix (a view where the layout allows)."""
        return _Distributions(self.given.reshape(-1, self.shape[-1]), self.kind)

    def rows(self, start: int, stop: int) -> _Distributions:
        """Rows ``start:stop`` of a flat batch."""
        return _Distributions(self.given[start:stop], self.kind)


_Operand = _Distributions | torch.Tensor  # distributions, or observed class indices

_CHECKS = {  # how each representation is checked
    "log_probs": _checks.check_log_probs,
    "probs": _checks.check_probs,
    "logits": _checks.check_logits,
}


def _representation(name: str) -> str:
    """'log_probs' for `pred_log_probs`, 'probs' for `target_probs` or `probs`, ..."""
    return next(kind for kind in _CHECKS if name == kind or name.endswith(f"_{kind}"))


@dataclass(frozen=True)
class _Argument:
    """One distribution argument as the caller passed it: its name, shape and class axis."""

    name: str
    dist: _Distributions
    shape: torch.Size
    axis: int


def _read_distributions(
    name: str, value: ArrayLike, dim: int, validate: bool, device: torch.device | None = None
) -> _Argument:
    """Check one argument (``pred_logits``, ...) and move its classes to the last axis."""
    tensor = floating(to_tensor(name, value, device))
    axis = _checks.check_dim(dim, name, tensor)
    moved = tensor.movedim(axis, -1)
    _checks.check_num_classes(name, moved)
    kind = _representation(name)
    if validate:
        _CHECKS[kind](name, moved, axis)
    return _Argument(name, _Distributions(compute_precision(moved), kind), tensor.shape, axis)


def _read_index(name: str, value: ArrayLike, pred: _Argument, validate: bool) -> torch.Tensor:
    """Check observed class indices against the predictions' rows and classes."""
    index = _checks.as_class_index(name, to_tensor(name, value, pred.dist.given.device))
    _checks.check_same_shape(name, index.shape, pred.name, pred.shape, drop=pred.axis)
    if validate:
        _checks.check_index_range(name, index, pred.dist.shape[-1])
    return index


def _split_roles(arguments: dict[str, Any]) -> dict[str, ArrayLike]:
    """The target_* and pred_* keyword arguments of a public function, by name."""
    return {k: v for k, v in arguments.items() if k.startswith(("target_", "pred_"))}


def _read_pair(
    given: dict[str, ArrayLike], dim: int, validate: bool, *, pred_optional: bool = False
) -> tuple[_Operand, _Distributions]:
    """The true distributions (or observed classes) and the model's, checked against each other.

    With ``pred_optional`` and no pred given, the target is its own model (q = p).
    """
    preds = {k: v for k, v in given.items() if k.startswith("pred_")}
    targets = {k: v for k, v in given.items() if k.startswith("target_")}
    target_name, target_value = _checks.choose_one("true (target) distribution", **targets)
    if pred_optional and all(v is None for v in preds.values()):
        if target_name == "target_index":
            raise TypeError("`target_index` needs a model: pass one of `pred_probs=`, ...")
        itself = _read_distributions(target_name, target_value, dim, validate).dist
        return itself, itself
    pred = _read_distributions(
        *_checks.choose_one("model (pred) distribution", **preds), dim, validate
    )
    if target_name == "target_index":
        return _read_index(target_name, target_value, pred, validate), pred.dist
    device = pred.dist.given.device
    target = _read_distributions(target_name, target_value, dim, validate, device)
    _checks.check_same_shape(target.name, target.shape, pred.name, pred.shape)
    return target.dist, pred.dist


# On the CPU, when no gradient is needed (NumPy data, evaluation), a measure runs over blocks
# of rows whose temporaries stay in the L2 cache: one pass over the data in memory instead of
# one per operation, and no page faults from allocating full-size temporaries.
_BLOCK_ELEMENTS = 1 << 16


def _per_distribution(
    nats: Callable[..., torch.Tensor], *operands: _Operand, shape: torch.Size
) -> torch.Tensor:
    """``nats(*operands)``: one value per distribution, ``shape`` = the batch's leading axes."""
    tensors = [op.given if isinstance(op, _Distributions) else op for op in operands]
    rows = shape.numel()
    if _ops.tracked(*tensors) or tensors[0].device.type != "cpu" or rows == 0:
        return nats(*operands)
    flat = [op.flat() if isinstance(op, _Distributions) else op.reshape(-1) for op in operands]
    classes = next(op.shape[-1] for op in flat if isinstance(op, _Distributions))
    step = max(1, _BLOCK_ELEMENTS // classes)
    blocks = [
        nats(*(_rows(op, start, start + step) for op in flat)) for start in range(0, rows, step)
    ]
    return torch.cat(blocks).reshape(shape)


def _rows(operand: _Operand, start: int, stop: int) -> _Operand:
    if isinstance(operand, _Distributions):
        return operand.rows(start, stop)
    return operand[start:stop]


def _entropy_nats(dist: _Distributions) -> torch.Tensor:
    """H(p) = −Σ p log p, in nats, one value per distribution."""
    return 0.0 - _ops.times_log(dist.probs, dist.log_probs).sum(dim=-1)  # +0.0, never -0.0


def _cross_entropy_nats(target: _Operand, pred: _Distributions) -> torch.Tensor:
    """H(p, q) = −Σ p log q; for an observed class j (one-hot p) it is the NLL −log q_j."""
    if isinstance(target, torch.Tensor):
        return 0.0 - _log_prob_of(pred, target)
    return 0.0 - _ops.times_log(target.probs, pred.log_probs).sum(dim=-1)


def _log_prob_of(pred: _Distributions, index: torch.Tensor) -> torch.Tensor:
    """log q_j of the observed classes j, taking the log of the chosen entries only."""
    column = index.unsqueeze(-1)
    if pred.given_as_probs:
        return _ops.log(pred.probs.gather(-1, column).squeeze(-1))
    return pred.log_probs.gather(-1, column).squeeze(-1)


def _kl_divergence_nats(target: _Operand, pred: _Distributions) -> torch.Tensor:
    """D(p ‖ q) = Σ p (log p − log q); equal to H(p, q) when p is one-hot, as H(p) = 0."""
    if isinstance(target, torch.Tensor):
        return _cross_entropy_nats(target, pred)
    log_p, log_q = target.log_probs, pred.log_probs
    # A class both rule out (log p = log q = −inf) has ratio 0/0 := 1; without this guard its
    # −inf − (−inf) = NaN would reach the gradient in p, though its term p · 0 is 0.
    log_ratio = torch.where((log_p == -math.inf) & (log_q == -math.inf), 0.0, log_p - log_q)
    return _ops.times_log(target.probs, log_ratio).sum(dim=-1)


def _pairwise(
    nats: Callable[..., torch.Tensor], arguments: dict[str, Any], *, pred_optional: bool = False
) -> tuple[torch.Tensor, dict[str, ArrayLike]]:
    """Per-distribution values of a target/pred measure, from a public function's ``locals()``.

    Also returns the target_* and pred_* arguments, to give the result back in their kind.
    """
    given = _split_roles(arguments)
    target, pred = _read_pair(
        given, arguments["dim"], arguments["validate"], pred_optional=pred_optional
    )
    return _per_distribution(nats, target, pred, shape=pred.shape[:-1]), given


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
    identify an outcome drawn from p, with the questions chosen optimally for p (docs/theory.md §3).

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
    dist = _read_distributions(name, value, dim, validate).dist
    nats = _per_distribution(_entropy_nats, dist, shape=dist.shape[:-1])
    return _finish(nats, base, reduction, {name: value})


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
    model, the distribution the code (or classifier) was built for (docs/theory.md §4). In bits
    it is the expected number of yes/no questions when the questions are optimised for q but
    outcomes come from p. H(p, q) ≥ H(p), with equality iff q = p (Gibbs); it is not symmetric.
    With a one-hot target (``target_index``) it is the negative log-likelihood −log q_j of the
    observed class j.

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
            (the NLL of a batch, docs/theory.md §6), ``"mean"`` the average per example.
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
    nats, given = _pairwise(_cross_entropy_nats, locals())
    return _finish(nats, base, reduction, given)


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
    with the code built for the model q (the **pred**) instead of p's own code (docs/theory.md §5).
    D ≥ 0, with equality iff q = p; it is not symmetric. As a classifier loss its H(p) term does
    not depend on the model, so minimising D, H(p, q) or the NLL gives the same parameters.
    Computed term by term, Σ p (log p − log q), not as a difference of two sums, so that
    D(p ‖ p) is exactly 0 (log(p / q) would round once less, but overflows for a subnormal q).

    Args:
        target_probs, target_log_probs, target_logits: the true distributions p
            ``[..., num_classes]``; or
        target_index: observed classes ``[...]`` (a one-hot p, for which H(p) = 0 and
            D = H(p, q)). Give exactly one target.
        pred_probs, pred_log_probs, pred_logits: the model's distributions q
            ``[..., num_classes]``, same shape as the target. Give exactly one.
        base: unit: 2 bits (default), ``math.e`` nats, 10 hartleys.
        dim: the class axis.
        reduction: ``"none"`` one value per distribution, ``"sum"`` or ``"mean"`` over them.
        validate: check the values before computing.

    Returns:
        D(p ‖ q) in the unit of ``base`` (bits by default); +inf where p puts mass on a class
        with q = 0.

    >>> g, f = [1 / 8, 1 / 8, 3 / 4], [1 / 2, 1 / 4, 1 / 4]
    >>> d = kl_divergence(target_probs=g, pred_probs=f)
    >>> bool(abs(d - (cross_entropy(target_probs=g, pred_probs=f) - entropy(g))) < 1e-12)
    True
    """
    nats, given = _pairwise(_kl_divergence_nats, locals())
    return _finish(nats, base, reduction, given)


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

    For one observation this is −Σ_j y_j log ŷ_j with y one-hot (docs/theory.md §2): exactly the
    cross entropy H(y, ŷ). For a batch of independent observations the NLL of the batch is the
    sum of the per-example values (``reduction="sum"``, docs/theory.md §6); ``"mean"`` gives it
    per example.

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
    nats, given = _pairwise(_cross_entropy_nats, locals())
    return _finish(nats, base, reduction, given)


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
        target_probs, target_log_probs, target_logits, target_index: the truth p, as in
            :func:`cross_entropy` ``[..., num_classes]`` (``[...]`` for ``target_index``).
        pred_probs, pred_log_probs, pred_logits: the model q ``[..., num_classes]``, as in
            :func:`cross_entropy`; may be left out (then q = p).
        dim: the class axis.
        validate: check the values before computing.
        reduction: ``"mean"`` (default) the perplexity of the whole batch, base ** (mean H), or
            ``"none"`` one perplexity per distribution. A sum of perplexities means nothing, so
            ``"sum"`` is refused.

    Returns:
        A number ≥ 1 (no unit: a count of equally likely outcomes).

    >>> float(perplexity(target_probs=[0.25, 0.25, 0.25, 0.25]))
    4.0
    >>> q = [[0.5, 0.5], [0.25, 0.75]]     # NLL: 1 bit, then log2(4/3) = 0.415 bits
    >>> round(float(perplexity(target_index=[0, 1], pred_probs=q)), 4)   # 2 ** (mean NLL)
    1.633
    """
    mode = _checks.check_reduction(reduction, allowed=("none", "mean"))
    nats, given = _pairwise(_cross_entropy_nats, locals(), pred_optional=True)
    return to_output(_reduce(nats, mode).exp(), wants_numpy(list(given.values())))
