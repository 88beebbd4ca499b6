"""The losses as ``nn.Module``\\ s: options fixed (and checked) at construction."""

from __future__ import annotations

import math
from typing import Any

import torch

from crossent._checks import Reduction
from crossent.torch._head_loss import head_loss_of
from crossent.torch._head_pass import Head, HeadPlan
from crossent.torch._logits_loss import loss_of
from crossent.torch._spec import LossOptions, legacy_reduction, with_options_doc


class CrossEntropyLoss(torch.nn.Module):
    """The module form of :func:`~crossent.torch.cross_entropy`: ``torch.nn.CrossEntropyLoss``'s
    arguments in its order, then crossent's own, keyword-only. Calling it on logits ``(N, C)``
    (or ``(N, C, d1, ...)``) and targets gives the loss in nats unless ``base`` says otherwise.

    Args:
        size_average, reduce: PyTorch's deprecated forms of ``reduction``, read as PyTorch
            reads them (with its warning).
        {options}

    >>> loss = CrossEntropyLoss(label_smoothing=0.1, base=2)
    >>> loss(torch.tensor([[2.0, 0.0]]), torch.tensor([0]))
    tensor(0.3274)
    """

    def __init__(
        self,
        weight: torch.Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: Reduction = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        base: float = math.e,
    ) -> None:
        super().__init__()
        reduction = legacy_reduction(size_average, reduce, reduction)
        self.options = LossOptions(
            weight, ignore_index, label_smoothing, z_loss, softcap, reduction, base
        )
        self.weight: torch.Tensor | None
        self.register_buffer("weight", weight)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss, as :func:`~crossent.torch.cross_entropy` with this module's options.

        Args:
            input: logits ``(N, C)``, ``(N, C, d1, ...)`` or ``(C,)``.
            target: class indices ``(N,)`` / ``(N, d1, ...)``, or probabilities of the
                logits' shape.
        """
        return loss_of(input, target, self.options.with_weight(self.weight))

    def extra_repr(self) -> str:
        return _options_repr(self.options)


class LinearCrossEntropy(torch.nn.Module):
    """A classifier head and its loss in one: ``nn.Linear(in_features, classes)`` followed by
    cross entropy, computed by :func:`~crossent.torch.linear_cross_entropy` without the N×C
    logits.

    ``forward(hidden, target)`` returns the loss; :meth:`logits` gives the logits for
    inference. The parameters are initialised as ``nn.Linear``'s, and :meth:`from_linear`
    wraps the parameters of an existing ``nn.Linear``. Every option is checked here, so a
    misspelt one fails at construction.

    Args:
        in_features: D, the width of the hidden states.
        classes: C, the number of classes (a language model's vocabulary).
        bias: whether the head has a bias ``(C,)``.
        device, dtype: of the parameters, as ``nn.Linear``'s.
        **options: the loss's options, by name: ``class_weight`` (the class weights,
            ``weight`` below), the options below, and ``chunk_size``, ``low_memory``,
            ``weight_grad_dtype`` as in :func:`~crossent.torch.linear_cross_entropy`.
        {options}

    >>> head = LinearCrossEntropy(4, 3, z_loss=1e-4)
    >>> head.weight.shape                   # (C, D), as nn.Linear(4, 3)'s
    torch.Size([3, 4])
    >>> head(torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])).shape   # the mean loss, nats
    torch.Size([])
    """

    def __init__(
        self,
        in_features: int,
        classes: int,
        bias: bool = True,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        linear = torch.nn.Linear(in_features, classes, bias, device=device, dtype=dtype)
        self.weight = linear.weight
        self.bias = linear.bias
        self._configure(options)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear, **options: Any) -> LinearCrossEntropy:
        """A head sharing ``linear``'s parameters (not copies), with the loss's ``options``.

        Args:
            linear: the ``nn.Linear(D, C)`` whose weight and bias the head uses.
            **options: the loss's options, as :class:`LinearCrossEntropy` takes them.

        >>> linear = torch.nn.Linear(4, 3)
        >>> LinearCrossEntropy.from_linear(linear, base=2).weight is linear.weight
        True
        """
        head = cls.__new__(cls)
        torch.nn.Module.__init__(head)
        head.weight, head.bias = linear.weight, linear.bias
        head._configure(options)
        return head

    def _configure(self, options: dict[str, Any]) -> None:
        """The options, checked: the loss's, then the head's."""
        plan_names = ("chunk_size", "low_memory", "weight_grad_dtype")
        plan = {name: options.pop(name) for name in plan_names if name in options}
        class_weight = options.pop("class_weight", None)
        try:
            self.options = LossOptions(weight=class_weight, **options)
        except TypeError as error:
            if "unexpected keyword" not in str(error):
                raise
            known = sorted({*LossOptions.__dataclass_fields__, *plan_names} - {"weight"})
            unknown = sorted(set(options) - set(LossOptions.__dataclass_fields__))
            raise TypeError(
                f"LinearCrossEntropy got an unknown option {', '.join(map(repr, unknown))}; "
                f"it takes class_weight, {', '.join(known)}"
            ) from None
        self.plan = HeadPlan(**plan)
        self.class_weight: torch.Tensor | None
        self.register_buffer("class_weight", class_weight)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden @ weight.T + bias``: the logits, for inference.

        Args:
            hidden: ``(..., D)`` hidden states; the logits are ``(..., C)``.
        """
        return torch.nn.functional.linear(hidden, self.weight, self.bias)

    def forward(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of the head's logits, never made whole, against ``target``.

        Args:
            hidden: ``(N, D)`` hidden states.
            target: ``(N,)`` class indices, or ``(N, C)`` probabilities.
        """
        options = self.options.with_weight(self.class_weight)
        head = Head(hidden, self.weight, self.bias, target)
        return head_loss_of(head, options, self.plan)[0]

    def extra_repr(self) -> str:
        classes, features = self.weight.shape
        head = f"in_features={features}, classes={classes}, bias={self.bias is not None}"
        return head + _options_repr(self.options, self.plan, leading=", ")


def _options_repr(options: LossOptions, plan: HeadPlan | None = None, leading: str = "") -> str:
    """The options that differ from their defaults, as ``name=value``."""
    defaults = [(LossOptions(), options)] + ([] if plan is None else [(HeadPlan(), plan)])
    parts = [
        f"{name}={getattr(given, name)!r}"
        for default, given in defaults
        for name in default.__dataclass_fields__
        if name != "weight" and getattr(given, name) != getattr(default, name)
    ]
    return (leading if parts else "") + ", ".join(parts)


with_options_doc(CrossEntropyLoss)
with_options_doc(LinearCrossEntropy)
