"""Checks on user input, shared by every public function.

Each failure raises ``ValueError`` or ``TypeError`` with a message that names the argument, the
rule it breaks, and the value that broke it with its position in the caller's array. The checks
are vectorised reductions; positions are looked up only once a check has failed.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
import warnings
from types import FrameType
from typing import Literal

import torch

Reduction = Literal["none", "sum", "mean"]
REDUCTIONS: tuple[Reduction, ...] = ("none", "sum", "mean")

# Rows of probabilities must sum to 1 within this tolerance. sqrt(float32 eps) ≈ 3.5e-4 admits
# probabilities computed in float32 for 256,000 classes and then stored in float64, and still
# rejects percentages, unnormalised scores and truncated rows; float16/bfloat16 inputs, whose
# every entry is rounded to 2^-11 / 2^-8 relative, get 4 units in the last place.
_FLOAT32_SQRT_EPS = math.sqrt(torch.finfo(torch.float32).eps)


def sum_tolerance(dtype: torch.dtype) -> float:
    """How far from 1 a row of probabilities of ``dtype`` may sum."""
    return max(_FLOAT32_SQRT_EPS, 4 * torch.finfo(dtype).eps)


def check_base(base: object) -> float:
    """``base`` of the logarithm: a finite positive number other than 1 (2 bits, e nats)."""
    if isinstance(base, bool) or not isinstance(base, numbers.Real):
        raise TypeError(
            f"`base` must be a real number such as 2 (bits) or math.e (nats); got {base!r}"
        )
    value = float(base)
    if not (math.isfinite(value) and value > 0 and value != 1):
        raise ValueError(f"`base` must be a finite positive number other than 1; got {base!r}")
    return value


def check_reduction(reduction: object, allowed: tuple[Reduction, ...] = REDUCTIONS) -> Reduction:
    """``reduction`` over distributions: none (one value each), sum (batch), mean (per example)."""
    for name in allowed:
        if reduction == name:
            return name
    choices = ", ".join(repr(name) for name in allowed)
    raise ValueError(f"`reduction` must be one of {choices}; got {reduction!r}")


def check_dim(dim: object, name: str, tensor: torch.Tensor) -> int:
    """``dim``, the class axis of ``tensor``, as a non-negative axis number."""
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"`dim` must be an integer axis; got {dim!r}")
    if tensor.ndim == 0:
        raise ValueError(
            f"`{name}` must have at least one axis, the classes; got a scalar {tensor.item()!r}"
        )
    axis = int(dim)
    if not -tensor.ndim <= axis < tensor.ndim:
        raise ValueError(
            f"`dim` must be an axis of `{name}` (shape {tuple(tensor.shape)}); got {dim}"
        )
    return axis % tensor.ndim


def check_num_classes(name: str, tensor: torch.Tensor) -> None:
    """A distribution needs at least one class along the last axis."""
    if tensor.shape[-1] == 0:
        raise ValueError(f"`{name}` must have at least one class along `dim`; got 0 classes")


def choose_one(role: str, **given: object) -> tuple[str, object]:
    """The single representation the caller gave for one distribution (probs, logits, ...)."""
    passed = [(name, value) for name, value in given.items() if value is not None]
    if len(passed) != 1:
        options = ", ".join(f"`{name}=`" for name in given)
        got = ", ".join(f"`{name}`" for name, _ in passed) or "none"
        raise TypeError(f"pass exactly one of {options} for the {role}; got {got}")
    return passed[0]


def check_same_shape(
    name_a: str, shape_a: torch.Size, name_b: str, shape_b: torch.Size, *, drop: int | None = None
) -> None:
    """``a`` has the shape of ``b`` (without ``b``'s class axis ``drop``, if given).

    Shapes are the caller's, before the class axis was moved last.
    """
    expected = shape_b if drop is None else shape_b[:drop] + shape_b[drop + 1 :]
    if shape_a != expected:
        of_b = f"`{name_b}`" if drop is None else f"`{name_b}` without its class axis {drop}"
        raise ValueError(
            f"`{name_a}` must have the shape of {of_b}: {tuple(expected)}; got {tuple(shape_a)}"
        )


def check_probs(name: str, probs: torch.Tensor, dim: int) -> None:
    """Probabilities: no NaN, each in [0, 1], each row summing to 1 (``sum_tolerance``)."""
    if probs.numel() == 0:
        return
    lowest, highest = torch.aminmax(probs)
    tolerance = sum_tolerance(probs.dtype)
    if bool(torch.isnan(lowest)):
        _raise_at(name, "must not contain NaN", torch.isnan(probs), probs, dim)
    if bool(lowest < 0) or bool(highest > 1 + tolerance):
        bad = (probs < 0) | (probs > 1 + tolerance)
        hint = _hint_for_non_probs(name, probs)
        _raise_at(name, "must be probabilities in [0, 1]", bad, probs, dim, hint)
    sums = probs.sum(dim=-1)
    off = _off_one(sums, probs.dtype)
    if bool(off.any()):
        row = _first(off)
        raise ValueError(
            f"`{name}` must sum to 1 (within {tolerance:.1e} for {_dtype(probs)}); "
            f"{_row(row)} sums to {sums[row].item():.6g}"
        )


def check_log_probs(name: str, log_probs: torch.Tensor, dim: int) -> None:
    """Log-probabilities: no NaN, each ≤ 0, and exp of each row summing to 1."""
    if log_probs.numel() == 0:
        return
    tolerance = sum_tolerance(log_probs.dtype)
    highest = log_probs.max()  # NaN propagates
    if bool(torch.isnan(highest)):
        _raise_at(name, "must not contain NaN", torch.isnan(log_probs), log_probs, dim)
    if bool(highest > math.log1p(tolerance)):
        positive = log_probs > math.log1p(tolerance)
        hint = _hint_for_non_log_probs(name, log_probs)
        _raise_at(name, "must be log-probabilities, ≤ 0", positive, log_probs, dim, hint)
    log_sums = torch.logsumexp(log_probs, dim=-1)
    off = _off_one(log_sums.exp(), log_probs.dtype)
    if bool(off.any()):
        row = _first(off)
        raise ValueError(
            f"`{name}` must be normalised: exp of it must sum to 1 (within "
            f"{tolerance:.1e}); {_row(row)} sums to {log_sums[row].exp().item():.6g}. "
            f"Unnormalised scores are logits: pass them as `{_sibling(name, 'logits')}=`"
        )


def check_logits(name: str, logits: torch.Tensor, dim: int) -> None:
    """Logits: real numbers or −inf (probability 0), and at least one finite value per row."""
    if logits.numel() == 0:
        return
    highest = logits.max()  # NaN propagates
    if bool(torch.isnan(highest)) or bool(highest == math.inf):
        bad = torch.isnan(logits) | (logits == math.inf)
        _raise_at(name, "must be real numbers or -inf, not NaN or +inf", bad, logits, dim)
    empty_rows = logits.amax(dim=-1) == -math.inf
    if bool(empty_rows.any()):
        raise ValueError(
            f"`{name}`: {_row(_first(empty_rows))} is -inf everywhere, which gives no "
            "distribution (at least one class needs a finite logit)"
        )
    if _looks_like_probs(logits):
        warnings.warn(
            f"every row of `{name}` is non-negative and sums to 1: these look like probabilities, "
            f"which softmax would distort; pass them as `{_sibling(name, 'probs')}=`",
            UserWarning,
            stacklevel=_caller_stacklevel(),
        )


def as_class_index(name: str, index: torch.Tensor) -> torch.Tensor:
    """Class indices must be integers; returned as int64, the dtype indexing wants."""
    if index.numel() > 0 and (index.dtype == torch.bool or index.is_floating_point()):
        raise TypeError(
            f"`{name}` must hold integer class indices; got dtype {_dtype(index)}"
            " (convert with .astype(int) / .long() if the values are whole numbers)"
        )
    return index.long()


def check_index_range(
    name: str, index: torch.Tensor, num_classes: int, ignore_index: int | None = None
) -> None:
    """Class indices (int64) must lie in [0, num_classes), or equal ``ignore_index``."""
    if index.numel() == 0:
        return
    lowest, highest = torch.aminmax(index)
    if bool(lowest < 0) or bool(highest >= num_classes):
        bad = (index < 0) | (index >= num_classes)
        if ignore_index is not None:
            bad &= index != ignore_index
            if not bool(bad.any()):
                return
        position = _first(bad)
        where = f" at position {position}" if position else ""
        also = f" or ignore_index {ignore_index}" if ignore_index is not None else ""
        raise ValueError(
            f"`{name}` must be class indices in [0, {num_classes}){also}; "
            f"got {index[position].item()}{where}"
        )


def _looks_like_probs(tensor: torch.Tensor) -> bool:
    """Two or more classes, every entry in [0, 1], not all 0 or 1, every row summing to 1.

    Rows such as logits [0, 1] are plausible logits, hence the 'not all 0 or 1'.
    """
    if tensor.shape[-1] < 2:
        return False
    lowest, highest = torch.aminmax(tensor)
    if not (bool(lowest >= 0) and bool(highest <= 1)):
        return False
    fractional = bool(((tensor > 0) & (tensor < 1)).any())
    return fractional and _rows_sum_to_one(tensor)


def _rows_sum_to_one(tensor: torch.Tensor) -> bool:
    return not bool(_off_one(tensor.sum(dim=-1), tensor.dtype).any())


def _looks_like_log_probs(tensor: torch.Tensor) -> bool:
    """Every entry ≤ 0 and exp of every row summing to 1."""
    if bool(tensor.max() > 0):
        return False
    return not bool(_off_one(torch.logsumexp(tensor, dim=-1).exp(), tensor.dtype).any())


def _off_one(row_sums: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Which rows of probabilities of ``dtype`` sum to further from 1 than ``sum_tolerance``."""
    return (row_sums - 1).abs() > sum_tolerance(dtype)


def _hint_for_non_probs(name: str, tensor: torch.Tensor) -> str:
    if name.startswith("-"):  # a command-line option, not a keyword of the API
        return ""
    if _looks_like_log_probs(tensor):
        return f"these look like log-probabilities: pass them as `{_sibling(name, 'log_probs')}=`"
    return f"if these are unnormalised scores, pass them as `{_sibling(name, 'logits')}=`"


def _hint_for_non_log_probs(name: str, tensor: torch.Tensor) -> str:
    if _looks_like_probs(tensor):
        return f"these look like probabilities: pass them as `{_sibling(name, 'probs')}=`"
    return f"if these are unnormalised scores, pass them as `{_sibling(name, 'logits')}=`"


def _sibling(name: str, kind: str) -> str:
    """The keyword for the same role in another representation: pred_probs → pred_logits."""
    role, _, _ = name.partition("_")
    return f"{role}_{kind}" if role in ("target", "pred") else kind


def _raise_at(
    name: str,
    rule: str,
    bad: torch.Tensor,
    values: torch.Tensor,
    dim: int,
    hint: str = "",
) -> None:
    """Raise ValueError naming the first bad value and its position in the caller's layout."""
    position = _first(bad)
    value = _show(values[position].item(), values.dtype)
    caller_position = position[:-1]
    caller_position = caller_position[:dim] + position[-1:] + caller_position[dim:]
    suffix = f"; {hint}" if hint else ""
    raise ValueError(f"`{name}` {rule}; got {value} at position {caller_position}{suffix}")


def _caller_stacklevel() -> int:
    """The stack level of the first frame outside crossent, for warnings.warn."""
    package = os.path.dirname(__file__) + os.sep
    frame: FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _show(value: float, dtype: torch.dtype) -> str:
    """``value`` with the digits its dtype holds: 0.1 in float32 shows as 0.1, not 0.100000001."""
    digits = int(-math.log10(torch.finfo(dtype).eps)) + 1
    return repr(float(f"{value:.{digits}g}"))


def _row(position: tuple[int, ...]) -> str:
    """'row (3, 1)' for a distribution in a batch; 'it' for a single distribution."""
    return f"row {position}" if position else "it"


def _first(mask: torch.Tensor) -> tuple[int, ...]:
    """The index of the first True in ``mask`` (row-major order)."""
    return tuple(int(i) for i in torch.nonzero(mask)[0])


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")
