"""The loss's one specification: its options, checked once, and the rules every backend shares.

For the logits x of one example (C classes), capped to s · tanh(x / s) when ``softcap`` = s,
with lse = log Σ_j exp x_j, log p_j = x_j − lse, class weights w (all 1 by default), label
smoothing ε and z-loss z, the loss of one example in nats is

    index target y:        −(1 − ε) w_y log p_y − (ε / C) Σ_j w_j log p_j   + z · lse²
    probability target t:  −Σ_j w_j t'_j log p_j,  t' = (1 − ε) t + ε / C     + z · lse²

with 0 · log 0 = 0 (a term whose weight is 0 is 0, also where its logit is −inf). An example
whose target is ``ignore_index`` has loss 0 and gradient exactly 0. ``reduction="mean"``
divides the sum by Σ w_y over the examples not ignored (index targets; the mean over no
examples is 0) or by the number of examples (probability targets); ``base`` divides by
ln(base). Every backend computes this; :mod:`crossent.torch.reference` states it in float64.
"""

from __future__ import annotations

import functools
import math
import numbers
import warnings
from dataclasses import dataclass

import torch

from crossent._checks import Reduction, check_base, check_reduction

OPTIONS_DOC = """weight: ``(C,)`` class weights w (``class_weight`` in the linear form).
        ignore_index: the index target of examples that count for nothing: loss 0, gradient
            exactly 0. Refused with probability targets when ≥ 0, as in PyTorch.
        label_smoothing: ε in [0, 1]: the target becomes (1 − ε) · target + ε / C.
        reduction: "mean" (over examples not ignored, weighted by w_y for index targets;
            0 over no examples), "sum" or "none" (one loss per example).
        z_loss: z ≥ 0, adds z · lse² per example (PaLM's auxiliary loss).
        softcap: s > 0 caps the logits to s · tanh(x / s) first (Gemma 2); None: no cap.
        base: the logarithm's base: e (nats, the default), 2 (bits), 10."""
"""The options' documentation, shared by every public loss and module (``{options}``)."""


@dataclass(frozen=True)
class LossOptions:
    """Every option of the loss, checked when made: a misspelt or out-of-range option fails
    here, before any tensor is touched.

    Args:
        {options}
    """

    weight: torch.Tensor | None = None
    ignore_index: int = -100
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None
    reduction: Reduction = "mean"
    base: float = math.e

    def __post_init__(self) -> None:
        check_reduction(self.reduction)
        _set(self, "base", check_base(self.base))
        ignore_index: object = self.ignore_index
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, numbers.Integral):
            raise TypeError(f"`ignore_index` must be an integer; got {ignore_index!r}")
        _set(self, "ignore_index", int(ignore_index))
        eps, z_loss = (
            _number("label_smoothing", self.label_smoothing),
            _number("z_loss", self.z_loss),
        )
        if not 0.0 <= eps <= 1.0:
            raise ValueError(f"`label_smoothing` must be in [0, 1]; got {self.label_smoothing!r}")
        if not (z_loss >= 0 and math.isfinite(z_loss)):
            raise ValueError(f"`z_loss` must be a finite number ≥ 0; got {self.z_loss!r}")
        _set(self, "label_smoothing", eps)
        _set(self, "z_loss", z_loss)
        if self.softcap is not None:
            softcap = _number("softcap", self.softcap)
            if not (softcap > 0 and math.isfinite(softcap)):
                raise ValueError(
                    f"`softcap` must be a finite number > 0 or None; got {self.softcap!r}"
                )
            _set(self, "softcap", softcap)
        _check_weight(self.weight)

    @classmethod
    def of(
        cls,
        weight: torch.Tensor | None,
        ignore_index: int,
        label_smoothing: float,
        z_loss: float,
        softcap: float | None,
        reduction: Reduction,
        base: float,
    ) -> LossOptions:
        """``LossOptions(...)``, the options other than the weights checked once per distinct
        set of values: a loss called every step with the same options checks them once."""
        try:
            options = _checked(ignore_index, label_smoothing, z_loss, softcap, reduction, base)
        except TypeError as error:  # an unhashable value: checked, and refused, here
            if "unhashable" not in str(error):
                raise
            options = cls(None, ignore_index, label_smoothing, z_loss, softcap, reduction, base)
        return options.with_weight(weight)

    def with_weight(self, weight: torch.Tensor | None) -> LossOptions:
        """These options with the class weights ``weight`` (checked); the others, checked
        when these were made, are not checked again."""
        if weight is self.weight:
            return self
        _check_weight(weight)
        copy = object.__new__(LossOptions)
        copy.__dict__.update(self.__dict__)
        _set(copy, "weight", weight)
        return copy

    @property
    def scale(self) -> float:
        """1 / ln(base): nats to the unit of ``base``."""
        return 1.0 / math.log(self.base)

    def check_classes(self, classes: int) -> None:
        """The class weights fit logits of ``classes`` classes (all ranks' classes)."""
        if self.weight is not None and tuple(self.weight.shape) != (classes,):
            raise ValueError(
                f"`weight` must have shape ({classes},), one per class; "
                f"got {tuple(self.weight.shape)}"
            )

    def check_target(self, target: torch.Tensor) -> None:
        """Probability targets take no ``ignore_index`` ≥ 0 (PyTorch refuses it too): no
        example's target is a class that could be ignored."""
        if target.is_floating_point() and self.ignore_index >= 0:
            raise ValueError(
                "`ignore_index` is not supported with probability targets (no example's target "
                f"is a class); got ignore_index={self.ignore_index}"
            )


LossOptions.__doc__ = (LossOptions.__doc__ or "").format(options=OPTIONS_DOC)


def with_options_doc(function: object) -> None:
    """Fill ``{options}`` in ``function``'s docstring with :data:`OPTIONS_DOC`."""
    doc = getattr(function, "__doc__", None)
    if doc:
        function.__doc__ = doc.replace("{options}", OPTIONS_DOC)


def legacy_reduction(
    size_average: bool | None, reduce: bool | None, reduction: Reduction
) -> Reduction:
    """PyTorch's deprecated ``size_average`` and ``reduce``, as PyTorch reads them (with its
    warning): ``reduce=False`` is "none", else ``size_average=False`` is "sum", else "mean"."""
    if size_average is None and reduce is None:
        return reduction
    size_average = True if size_average is None else size_average
    reduce = True if reduce is None else reduce
    legacy: Reduction = "none" if not reduce else "mean" if size_average else "sum"
    warnings.warn(
        f"size_average and reduce args will be deprecated, please use reduction='{legacy}' "
        "instead.",
        UserWarning,
        stacklevel=3,
    )
    return legacy


@functools.lru_cache(maxsize=64, typed=True)  # typed: True is not 1
def _checked(
    ignore_index: int,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    reduction: Reduction,
    base: float,
) -> LossOptions:
    return LossOptions(None, ignore_index, label_smoothing, z_loss, softcap, reduction, base)


def _check_weight(weight: object) -> None:
    """Class weights: None, or a 1-D floating-point tensor."""
    if weight is not None and not (
        isinstance(weight, torch.Tensor) and weight.is_floating_point() and weight.dim() == 1
    ):
        raise TypeError(
            "`weight` must be a 1-D floating-point tensor of class weights; got "
            + (f"{weight.dtype} of shape {tuple(weight.shape)}" if isinstance(weight, torch.Tensor)
               else repr(type(weight).__name__))
        )  # fmt: skip


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype every backend computes in: float64 for float64 inputs, float32 otherwise
    (float16 and bfloat16 are accumulated in float32)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"`{name}` must be a real number; got {value!r}")
    return float(value)


def _set(options: LossOptions, name: str, value: object) -> None:
    object.__setattr__(options, name, value)
