"""Every error crossent.torch documents, with its type and the words a user acts on: the
argument, the rule and the value."""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Callable

import numpy as np
import pytest
import torch

from crossent.torch import CrossEntropyLoss, LinearCrossEntropy, cross_entropy, linear_cross_entropy

X = torch.randn(3, 4)
Y = torch.tensor([0, 1, 3])
H, W = torch.randn(3, 2), torch.randn(4, 2)
P = torch.softmax(torch.randn(3, 4), -1)

CASES: list[tuple[str, Callable[[], object], type[Exception], str]] = [
    ("integer logits", lambda: cross_entropy(X.long(), Y), TypeError,
     r"`logits` must be a floating-point tensor; got dtype torch.int64"),
    ("probability target of another shape", lambda: cross_entropy(X, P[:, :3]), ValueError,
     r"probability `target` must have the shape of `logits` \(3, 4\); got \(3, 3\)"),
    ("index target of another shape", lambda: cross_entropy(X, Y[:2]), ValueError,
     r"index `target` must have the shape of `logits` \(3, 4\) without its class dimension, "
     r"\(3,\); got \(2,\)"),
    ("label out of range", lambda: cross_entropy(X, torch.tensor([0, 4, 1])), ValueError,
     r"`target` must be class indices in \[0, 4\) or ignore_index -100; got 4 at position"),
    ("ignore_index not an integer", lambda: cross_entropy(X, Y, ignore_index=1.5), TypeError,
     r"`ignore_index` must be an integer; got 1.5"),
    ("ignore_index with probabilities", lambda: cross_entropy(X, P, ignore_index=2), ValueError,
     r"`ignore_index` is not supported with probability targets .*; got ignore_index=2"),
    ("label smoothing out of range", lambda: cross_entropy(X, Y, label_smoothing=-0.1),
     ValueError, r"`label_smoothing` must be in \[0, 1\]; got -0.1"),
    ("label smoothing not a number", lambda: cross_entropy(X, Y, label_smoothing="0.1"),
     TypeError, r"`label_smoothing` must be a real number; got '0.1'"),
    ("z-loss infinite", lambda: cross_entropy(X, Y, z_loss=math.inf), ValueError,
     r"`z_loss` must be a finite number ≥ 0; got inf"),
    ("softcap negative", lambda: cross_entropy(X, Y, softcap=-1.0), ValueError,
     r"`softcap` must be a finite number > 0 or None; got -1.0"),
    ("class weights of a list", lambda: cross_entropy(X, Y, [1.0, 2.0, 3.0, 4.0]), TypeError,
     r"`weight` must be a 1-D floating-point tensor of class weights; got 'list'"),
    ("integer class weights", lambda: cross_entropy(X, Y, torch.ones(4, dtype=torch.long)),
     TypeError, r"`weight` must be a 1-D floating-point tensor .*got torch.int64 of shape"),
    ("class weights of the wrong length", lambda: cross_entropy(X, Y, torch.ones(5)),
     ValueError, r"`weight` must have shape \(4,\), one per class; got \(5,\)"),
    ("reduction unknown", lambda: cross_entropy(X, Y, reduction="avg"), ValueError,
     r"`reduction` must be one of 'none', 'sum', 'mean'; got 'avg'"),
    ("base 1", lambda: cross_entropy(X, Y, base=1), ValueError,
     r"`base` must be a finite positive number other than 1; got 1"),
    ("inplace backward with a target that wants a gradient",
     lambda: cross_entropy(X.clone().requires_grad_(), P.clone().requires_grad_(),
                           inplace_backward=True),
     ValueError, r"^`inplace_backward=True` overwrites the logits, which the target's gradient "
                 r"needs; pass inplace_backward=False for a target that requires grad$"),
    ("integer hidden", lambda: linear_cross_entropy(H.long(), W.long(), Y), TypeError,
     r"`hidden` must be a floating-point tensor; got dtype torch.int64"),
    ("integer head weight", lambda: linear_cross_entropy(H, W.long(), Y), TypeError,
     r"`weight` must be a floating-point tensor; got dtype torch.int64"),
    ("head weight of another dtype", lambda: linear_cross_entropy(H, W.double(), Y), TypeError,
     r"`weight` must have the dtype of `hidden`, torch.float32; got torch.float64"),
    ("head weight of the wrong width", lambda: linear_cross_entropy(H, torch.randn(4, 3), Y),
     ValueError, r"`weight` must be \(C, D\) with D = hidden.shape\[-1\]; got weight \(4, 3\)"),
    ("bias of the wrong length", lambda: linear_cross_entropy(H, W, Y, bias=torch.ones(3)),
     ValueError, r"`bias` must have shape \(4,\); got \(3,\)"),
    ("head target of another shape", lambda: linear_cross_entropy(H, W, Y[:2]), ValueError,
     r"index `target` must have shape \(3,\) for hidden \(3, 2\); got \(2,\)"),
    ("chunk size 0", lambda: linear_cross_entropy(H, W, Y, chunk_size=0), ValueError,
     r"`chunk_size` must be a whole number ≥ 1 or None; got 0"),
    ("low_memory not a bool", lambda: linear_cross_entropy(H, W, Y, low_memory="yes"),
     TypeError, r"`low_memory` must be True, False or None; got 'yes'"),
    ("weight_grad_dtype an integer dtype",
     lambda: linear_cross_entropy(H, W, Y, weight_grad_dtype=torch.int32), TypeError,
     r"`weight_grad_dtype` must be a floating-point torch.dtype or None; got torch.int32"),
    ("low memory with class weights",
     lambda: linear_cross_entropy(H, W, Y, low_memory=True, class_weight=torch.ones(4)),
     ValueError, r"`low_memory=True` takes class-index targets .*; got a class_weight"),
    ("low memory with probability targets",
     lambda: linear_cross_entropy(H, W, P, low_memory=True), ValueError,
     r"`low_memory=True` takes class-index targets .*; got probability targets"),
    ("a misspelt head option", lambda: LinearCrossEntropy(2, 4, zloss=0.1), TypeError,
     r"LinearCrossEntropy got an unknown option 'zloss'; it takes class_weight, base, "),
    ("a module's bad option", lambda: CrossEntropyLoss(label_smoothing=2.0), ValueError,
     r"`label_smoothing` must be in \[0, 1\]; got 2.0"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "call", "kind", "message"), CASES, ids=[c[0] for c in CASES])
def test_each_documented_error(name: str, call, kind: type[Exception], message: str) -> None:
    with pytest.raises(kind, match=message):
        call()


def test_a_second_backward_through_an_in_place_gradient_is_refused() -> None:
    x = torch.randn(3, 4, requires_grad=True)
    loss = cross_entropy(x.clone(), Y, inplace_backward=True, reduction="sum")
    loss.backward(torch.tensor(2.0), retain_graph=True)
    message = (
        "crossent.torch.cross_entropy: backward ran twice through the same loss; with "
        "inplace_backward=True or on CUDA the gradient is scaled in place, so compute the loss "
        "again instead of retain_graph=True"
    )
    with pytest.raises(RuntimeError, match=f"^{re.escape(message)}$"):
        loss.backward(torch.tensor(2.0))


def test_split_losses_without_a_process_group_say_how_to_make_one() -> None:
    from crossent.torch.distributed import vocab_parallel_cross_entropy

    with pytest.raises(RuntimeError, match=r"call torch.distributed.init_process_group first"):
        vocab_parallel_cross_entropy(X, Y)


# ---- the one specification of the options (crossent/torch/_spec.py) ----


def test_options_are_kept_as_the_plain_numbers_they_mean() -> None:
    """Whatever number types come in (NumPy's, ints), the spec keeps Python ints and floats:
    one canonical value per option, so equal options are equal."""
    from crossent.torch._spec import LossOptions

    options = LossOptions.of(None, np.int64(3), 0, np.float32(0.5), 5, "mean", 2)
    values = (options.ignore_index, options.label_smoothing, options.z_loss, options.softcap)
    assert [type(v) for v in (*values, options.base)] == [int, float, float, float, float]
    assert (options.ignore_index, options.z_loss, options.softcap, options.base) == (
        3,
        0.5,
        5.0,
        2.0,
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"z_loss": "a"}, "`z_loss` must be a real number; got 'a'"),
        ({"softcap": "a"}, "`softcap` must be a real number; got 'a'"),
        ({"label_smoothing": [0.1]}, "`label_smoothing` must be a real number; got [0.1]"),
        ({"ignore_index": [1]}, "`ignore_index` must be an integer; got [1]"),
        ({"z_loss": [0.1]}, "`z_loss` must be a real number; got [0.1]"),
        ({"softcap": [1.0]}, "`softcap` must be a real number; got [1.0]"),
        ({"base": [2]}, "`base` must be a real number such as 2 (bits) or math.e (nats); got [2]"),
    ],
    ids=[
        "z_loss",
        "softcap",
        *(
            f"unhashable {name}"
            for name in ("label_smoothing", "ignore_index", "z_loss", "softcap", "base")
        ),
    ],
)
def test_each_option_is_named_when_it_is_not_a_number(options: dict, message: str) -> None:
    # an unhashable value cannot go through the cache of checked options: it is checked
    # (and refused) by the same rule, not reported as "unhashable type"
    with pytest.raises(TypeError, match=f"^{re.escape(message)}$"):
        cross_entropy(X, Y, **options)


def test_the_ends_of_the_option_ranges_are_accepted() -> None:
    assert torch.isfinite(cross_entropy(X, Y, label_smoothing=1.0))  # all mass spread
    assert torch.isfinite(cross_entropy(X, Y, softcap=0.5))  # any cap > 0


def test_class_weights_are_checked_when_options_are_made() -> None:
    from crossent.torch._spec import LossOptions

    with pytest.raises(TypeError, match=r"^`weight` must be a 1-D floating-point tensor"):
        LossOptions(torch.tensor([[1.0, 2.0]]))


def test_probability_targets_refuse_an_ignore_index_word_for_word() -> None:
    message = (
        "`ignore_index` is not supported with probability targets (no example's target is a "
        "class); got ignore_index=0"
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        cross_entropy(X, torch.softmax(X, dim=1), ignore_index=0)


def test_the_option_docs_are_filled_in_every_loss() -> None:
    from crossent.torch import CrossEntropyLoss, LinearCrossEntropy
    from crossent.torch._spec import OPTIONS_DOC

    for documented in (cross_entropy, linear_cross_entropy, CrossEntropyLoss, LinearCrossEntropy):
        doc = documented.__doc__ or ""
        assert "{options}" not in doc
        assert OPTIONS_DOC in doc, documented


def test_legacy_reduction_arguments_warn_at_the_callers_line() -> None:
    here = inspect.currentframe().f_lineno  # type: ignore[union-attr]
    with pytest.warns(UserWarning, match=r"please use reduction='sum' instead") as caught:
        cross_entropy(X, Y, size_average=False)  # two lines below `here`
    assert (caught[0].filename, caught[0].lineno) == (__file__, here + 2)
