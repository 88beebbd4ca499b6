"""Hugging Face transformers: a causal LM trained on crossent's loss, its logits never held.

    from crossent.integrations.transformers import patch
    model = AutoModelForCausalLM.from_pretrained(path)    # or from_config
    patch(model)                                          # or patch("llama") before loading

After :func:`patch`, ``model(input_ids, labels=labels)`` computes the loss with
:func:`crossent.torch.linear_cross_entropy` from the decoder's last hidden states and the
head's weight (and bias): the N × V logits are never made, and ``outputs.logits`` is None.
The loss is the one transformers computes (the label shift, ``ignore_index=-100``,
``num_items_in_batch``), with the head's scaling and soft-capping, in nats unless ``base``
says otherwise. Without labels the model runs its own forward, untouched: generation,
``logits_to_keep``, caches. Which forwards can be patched is a rule read from their source
(:mod:`crossent.integrations._forward`); :data:`TESTED` lists the families tested here.
:class:`BitsCallback` adds the loss in bits per token, the perplexity and bits per byte to the
Trainer's log lines. See docs/transformers.md.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from crossent._checks import Reduction, check_base
from crossent.integrations._forward import Layout, UnsupportedModelError, read_forward
from crossent.torch import linear_cross_entropy

__all__ = [
    "TESTED",
    "BitsCallback",
    "LossOptions",
    "UnsupportedModelError",
    "causal_lm_loss",
    "patch",
    "patch_options",
    "patched",
    "unpatch",
]

INSTALL = "pip install 'crossent[transformers]'"
try:
    import transformers
    from transformers import PreTrainedModel, TrainerCallback
    from transformers.loss.loss_utils import ForCausalLMLoss
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
except ImportError as error:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        f"crossent.integrations.transformers needs Hugging Face transformers ≥ 5.4: {INSTALL}"
    ) from error

TESTED = (
    "cohere", "gemma2", "gemma3_text", "gpt2", "granite", "llama", "mistral", "phi", "phi3",
    "qwen2", "qwen3",
)  # fmt: skip
"""Model types (``config.model_type``) whose causal LM is tested against transformers' own loss
and gradients here. Any other causal LM whose forward follows the rule is patched too."""

Target = TypeVar("Target")


@dataclass(frozen=True)
class LossOptions:
    """crossent's extras on top of transformers' loss, fixed when a model is patched.

    ``z_loss`` z adds z · lse(x)² per token (PaLM's z-loss, lse in nats), ``label_smoothing``
    ε takes (1 − ε) of the target and ε / V of every class, and ``base`` gives the loss in
    nats (e, transformers' unit), bits (2) or any other unit: nats / ln base.

    Attributes:
        z_loss: z ≥ 0, the weight of lse(x)² per token.
        label_smoothing: ε in [0, 1].
        base: the logarithm's base: e (nats, the default), 2 (bits).

    >>> LossOptions(base=2).is_nll
    True
    >>> LossOptions(label_smoothing=1.5)
    Traceback (most recent call last):
    ValueError: `label_smoothing` must be in [0, 1]; got 1.5
    """

    z_loss: float = 0.0
    label_smoothing: float = 0.0
    base: float = math.e

    def __post_init__(self) -> None:
        if not (isinstance(self.z_loss, int | float) and 0 <= self.z_loss < math.inf):
            raise ValueError(f"`z_loss` must be a finite number ≥ 0; got {self.z_loss!r}")
        smoothing = self.label_smoothing
        if not (isinstance(smoothing, int | float) and 0 <= smoothing <= 1):
            raise ValueError(f"`label_smoothing` must be in [0, 1]; got {smoothing!r}")
        check_base(self.base)

    @property
    def is_nll(self) -> bool:
        """Whether the loss is the negative log-likelihood itself (no z-loss, no smoothing)."""
        return self.z_loss == 0 and self.label_smoothing == 0


@dataclass(frozen=True)
class _Patch:
    """What crossent keeps on a forward it made: the forward it replaced, and its options."""

    original: Callable[..., Any]
    options: LossOptions
    owned: bool  # the class defined forward itself (not inherited) before the patch


def patch(
    target: Target, *, z_loss: float = 0.0, label_smoothing: float = 0.0, base: float = math.e
) -> Target:
    """Make ``target`` compute its causal-LM loss with crossent, without the logits.

    Args:
        target: a model (a ``PreTrainedModel``, also inside DDP or ``torch.compile``), a model
            class, or a model type (``"llama"``, ``config.model_type``) to patch the class of,
            so that every model of it made afterwards is patched.
        z_loss, label_smoothing, base: see :class:`LossOptions`.

    Returns ``target``. Patching again replaces the options. Raises
    :class:`UnsupportedModelError` for a model whose forward does not follow the rule of
    :mod:`crossent.integrations._forward`, naming the statement and the tested families.

    >>> import transformers
    >>> config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    >>> model = transformers.AutoModelForCausalLM.from_config(config)   # a tiny Llama
    >>> ids = torch.randint(0, 64, (2, 8))
    >>> before = model(ids, labels=ids).loss            # transformers' own loss, nats
    >>> outputs = patch(model)(ids, labels=ids)
    >>> outputs.logits is None, bool(torch.isclose(outputs.loss, before))
    (True, True)
    """
    options = LossOptions(z_loss, label_smoothing, base)
    model, cls = _resolve(target)
    original, owned = _original(cls, _own_patch(model, cls))
    layout = _layout(cls, original)
    if model is not None:
        _check_head(model, layout)
        forward = _patched_forward(_Patch(original, options, owned), layout)
        model.forward = types.MethodType(forward, model)
    else:
        cls.forward = _patched_forward(_Patch(original, options, owned), layout)  # type: ignore[attr-defined]
    return target


def unpatch(target: Target) -> Target:
    """Give ``target`` (model, class or model type, as :func:`patch` takes) back the forward it
    had before :func:`patch`. Returns ``target``; one that is not patched is left as it is.

    Args:
        target: a model, a model class or a model type.

    >>> import transformers
    >>> config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    >>> model = transformers.AutoModelForCausalLM.from_config(config)   # a tiny Llama
    >>> patch_options(unpatch(patch(model, base=2))) is None
    True
    """
    model, cls = _resolve(target)
    found = _own_patch(model, cls)
    if found is None:
        return target
    if model is not None:
        del model.forward
    elif found.owned:
        cls.forward = found.original  # type: ignore[attr-defined]
    else:
        delattr(cls, "forward")
    return target


@contextlib.contextmanager
def patched(target: Target, **options: Any) -> Iterator[Target]:
    """:func:`patch` for the duration of a ``with`` block; what was there before comes back.

    Args:
        target: a model, a model class or a model type.
        **options: ``z_loss``, ``label_smoothing``, ``base``, as :func:`patch` takes them.

    >>> import transformers
    >>> config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    >>> model = transformers.AutoModelForCausalLM.from_config(config)   # a tiny Llama
    >>> ids = torch.randint(0, 64, (1, 6))
    >>> with patched(model, base=2):
    ...     bits = model(ids, labels=ids).loss           # bits per token
    >>> nats = model(ids, labels=ids).loss               # transformers' own loss again
    >>> bool(torch.isclose(bits, nats / math.log(2)))
    True
    """
    before = _own_patch(*_resolve(target))
    patch(target, **options)
    try:
        yield target
    finally:
        unpatch(target)
        if before is not None:
            patch(target, **vars(before.options))


def patch_options(target: Any) -> LossOptions | None:
    """The options ``target`` (model, class or model type) is patched with; None if it is not.
    A model of a patched class reports the class's.

    Args:
        target: a model, a model class or a model type.

    >>> import transformers
    >>> config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2)
    >>> model = transformers.AutoModelForCausalLM.from_config(config)   # a tiny Llama
    >>> patch_options(patch(model, z_loss=1e-4))
    LossOptions(z_loss=0.0001, label_smoothing=0.0, base=2.718281828459045)
    """
    model, cls = _resolve(target)
    found = _patch_of(model.__dict__.get("forward")) if model is not None else None
    found = found or _patch_of(cls.__dict__.get("forward"))
    return None if found is None else found.options


def causal_lm_loss(
    hidden: torch.Tensor,
    labels: torch.Tensor | None,
    weight: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    scale: float | torch.Tensor = 1.0,
    softcap: float | None = None,
    num_items_in_batch: int | torch.Tensor | None = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    options: LossOptions = LossOptions(),
) -> torch.Tensor:
    """transformers' causal-LM loss (``ForCausalLMLoss``) from the last hidden states, computed
    by :func:`crossent.torch.linear_cross_entropy` without the logits.

    Position t of ``hidden`` (``(B, T, D)``, or rows ``(..., D)``) has the logits
    x_t = s · (W h_t + b), soft-capped to c · tanh(x_t / c) when ``softcap`` = c, and predicts
    y_t = ``labels[..., t + 1]`` (the last position predicts nothing), or
    ``shift_labels[..., t]`` when given. With ℓ_t = −log softmax(x_t)[y_t] in nats / ln base
    (plus the extras of ``options``) and n the number of positions whose y_t is not
    ``ignore_index``::

        loss = Σ_t ℓ_t / n                       (num_items_in_batch None: the mean here)
        loss = Σ_t ℓ_t / num_items_in_batch      (the target tokens of the accumulated batch)

    Under autocast the hidden rows and the head are cast to its dtype first, as ``nn.Linear``
    would be; the loss is float32 for float16/bfloat16 rows. A mean over no target is 0
    (transformers: NaN).

    Args:
        hidden: ``(B, T, D)`` the decoder's last hidden states (or rows ``(..., D)``).
        labels: ``(B, T)`` token ids, -100 (``ignore_index``) where nothing is predicted; or
            None with ``shift_labels``.
        weight: ``(V, D)`` the head's weight.
        bias: ``(V,)`` the head's bias, or None.
        scale: s, the factor of the logits (Cohere's ``logit_scale``, 1 / Granite's
            ``logits_scaling``).
        softcap: c > 0, the soft cap of the logits (Gemma 2's), or None.
        num_items_in_batch: the target tokens of the accumulated batch, to divide the sum by;
            None: the mean over this batch's targets.
        ignore_index: the label of positions that predict nothing.
        shift_labels: ``(B, T)`` labels already shifted (position t predicts
            ``shift_labels[..., t]``), as transformers passes them.
        options: the :class:`LossOptions` (z-loss, label smoothing, base).

    >>> h = torch.randn(2, 5, 8); w = torch.randn(11, 8); y = torch.randint(0, 11, (2, 5))
    >>> logits = (h @ w.T)[:, :-1].reshape(-1, 11)
    >>> want = torch.nn.functional.cross_entropy(logits, y[:, 1:].reshape(-1))
    >>> bool(torch.isclose(causal_lm_loss(h, y, w), want))
    True
    """
    if labels is None and shift_labels is None:
        raise ValueError("`labels` or `shift_labels` must be given; got neither")
    if shift_labels is None:
        padded = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)  # type: ignore[arg-type]
        shift_labels = padded[..., 1:]
    rows = hidden.reshape(-1, hidden.shape[-1])
    if not (isinstance(scale, int | float) and scale == 1):
        rows, bias = rows * scale, None if bias is None else bias * scale
    targets = shift_labels.reshape(-1).to(rows.device)
    reduction: Reduction = "mean" if num_items_in_batch is None else "sum"
    loss: torch.Tensor = _fused(
        rows, weight, targets, bias, softcap, ignore_index, reduction, options
    )
    if num_items_in_batch is None:
        return loss
    if isinstance(num_items_in_batch, torch.Tensor):
        num_items_in_batch = num_items_in_batch.to(loss.device)
    return loss / num_items_in_batch


def _fused(
    rows: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    bias: torch.Tensor | None,
    softcap: float | None,
    ignore_index: int,
    reduction: Reduction,
    options: LossOptions,
) -> torch.Tensor:
    """The crossent call (inside a compiled graph too: it is one registered operator), outside
    autocast after casting its inputs as autocast would cast ``nn.Linear``'s."""
    device = rows.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        rows, weight = _autocast(rows, dtype), _autocast(weight, dtype)
        bias = None if bias is None else _autocast(bias, dtype)
    with torch.autocast(device, enabled=False):
        loss: torch.Tensor = linear_cross_entropy(
            rows, weight, targets, bias=bias, ignore_index=ignore_index, softcap=softcap,
            reduction=reduction, z_loss=options.z_loss,
            label_smoothing=options.label_smoothing, base=options.base,
        )  # fmt: skip
    return loss


def _autocast(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` as autocast hands it to a matrix product: float16/32 and bfloat16 cast."""
    eligible = tensor.dtype in (torch.float16, torch.float32, torch.bfloat16)
    return tensor.to(dtype) if eligible else tensor


def _resolve(target: Any) -> tuple[Any, type]:
    """(model or None, its class) for a model, a model class or a model type."""
    if isinstance(target, str):
        return None, _class_named(target)
    if isinstance(target, type):
        if not issubclass(target, PreTrainedModel):
            raise TypeError(f"`target` must be a transformers model class; got {target!r}")
        return None, target
    model = _unwrapped(target)
    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            "`target` must be a transformers model, model class or model type (e.g. 'llama'); "
            f"got {type(target).__name__}"
        )
    return model, type(model)


def _unwrapped(model: Any) -> Any:
    """The model inside DistributedDataParallel (``.module``) and torch.compile (``._orig_mod``)."""
    while not isinstance(model, PreTrainedModel):
        inner = getattr(model, "_orig_mod", None)
        inner = getattr(model, "module", None) if inner is None else inner
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner
    return model


def _class_named(model_type: str) -> type:
    """The causal-LM class transformers maps ``model_type`` to."""
    name = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(model_type)
    if name is None:
        raise ValueError(
            f"`target` {model_type!r} is not a causal-LM model type of transformers "
            f"{transformers.__version__}; tested ones: {', '.join(TESTED)}"
        )
    found: type = getattr(transformers, name)
    return found


def _own_patch(model: Any, cls: type) -> _Patch | None:
    """The patch on this very model (or, for None, on ``cls``), not one it inherits."""
    return _patch_of((cls if model is None else model).__dict__.get("forward"))


def _patch_of(forward: Any) -> _Patch | None:
    """The :class:`_Patch` of a forward crossent made (bound or not); None for any other."""
    found = getattr(getattr(forward, "__func__", forward), "__crossent__", None)
    return found if isinstance(found, _Patch) else None


def _original(cls: type, previous: _Patch | None) -> tuple[Callable[..., Any], bool]:
    """The forward as transformers defines it, under any crossent patch, and whether ``cls``
    defines it itself."""
    if previous is not None:
        return previous.original, previous.owned
    in_class = _patch_of(cls.__dict__.get("forward"))
    if in_class is not None:  # a model of a patched class: its original under the class patch
        return in_class.original, in_class.owned
    return cls.forward, "forward" in cls.__dict__  # type: ignore[attr-defined]


def _layout(cls: type, original: Callable[..., Any]) -> Layout:
    """The forward's :class:`Layout`; the refusal names the tested families."""
    try:
        return read_forward(cls.__name__, original, _KNOWN)
    except UnsupportedModelError as error:
        raise UnsupportedModelError(
            f"crossent cannot patch {cls.__name__}: {error}. Tested model types: "
            f"{', '.join(TESTED)}; any other causal LM is patched when its forward follows "
            "the rule in docs/transformers.md (decoder, head, scaling and soft-capping, "
            "transformers' loss, nothing else)"
        ) from None


def _known() -> dict[str, Any]:
    """transformers' own helpers a forward may use, by the names forwards give them."""
    from transformers import modeling_utils, utils
    from transformers.utils import deprecation, generic

    found = {
        "slice_logits_to_keep": getattr(modeling_utils, "slice_logits_to_keep", None),
        "can_return_tuple": getattr(utils, "can_return_tuple", None),
        "deprecate_kwarg": getattr(deprecation, "deprecate_kwarg", None),
        "auto_docstring": getattr(utils, "auto_docstring", None),
        "ModelOutput": generic.ModelOutput,
        "torch": torch,
    }
    return {name: value for name, value in found.items() if value is not None}


_KNOWN = _known()


def _check_head(model: Any, layout: Layout) -> tuple[torch.nn.Linear, int]:
    """The model's head and vocabulary size, after checking what the patched loss relies on:
    the head is a plain ``nn.Linear`` (a subclass may compute something else) and the one
    ``get_output_embeddings()`` names, the loss is transformers' causal-LM loss (not one the
    user set), and the head has one output per word of the vocabulary the loss is given."""
    head = getattr(model, layout.head, None)
    name = type(model).__name__
    if type(head) is not torch.nn.Linear or head is not model.get_output_embeddings():
        kind = type(head).__name__
        raise UnsupportedModelError(
            f"crossent cannot patch {name}: its head `{layout.head}` must be the plain "
            f"torch.nn.Linear get_output_embeddings() returns; got {kind}"
        )
    if model.loss_function is not ForCausalLMLoss:
        raise UnsupportedModelError(
            f"crossent cannot patch {name}: its loss_function must be transformers' "
            f"ForCausalLMLoss; got {getattr(model.loss_function, '__name__', model.loss_function)}"
        )
    vocab = _attribute(model, layout.vocab)
    if head.weight.shape[0] != vocab:
        raise ValueError(
            f"{name}'s head has {head.weight.shape[0]} outputs but its loss is given vocab_size "
            f"{vocab} (self.{'.'.join(layout.vocab)}); they must be equal"
        )
    return head, vocab


def _attribute(model: Any, chain: tuple[str, ...]) -> Any:
    """``model.a.b`` for ``("a", "b")``."""
    value = model
    for name in chain:
        value = getattr(value, name)
    return value


def _patched_forward(patch: _Patch, layout: Layout) -> Callable[..., Any]:
    """The forward crossent puts in place of ``patch.original``.

    Without labels it calls the original function itself; with labels it runs the decoder as
    the original does and takes the loss from the hidden states. Both go through the
    original's decorators (return_dict, renamed arguments), built again around the new body.
    """
    raw = inspect.unwrap(patch.original)
    labels_at = layout.parameters.index("labels")

    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        given = len(args) > labels_at and labels_at < layout.positional
        labels = args[labels_at] if given else kwargs.get("labels")
        if labels is None:
            return raw(self, *args, **kwargs)
        return _forward_with_loss(self, layout, patch.options, args, kwargs)

    functools.update_wrapper(forward, raw)  # the decorators read the signature
    decorated = forward
    for decorator in reversed(layout.decorators):
        decorated = decorator(decorated)
    functools.update_wrapper(decorated, patch.original)
    decorated.__crossent__ = patch  # type: ignore[attr-defined]
    return decorated


def _forward_with_loss(
    model: Any, layout: Layout, options: LossOptions, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> Any:
    """The forward with labels: the decoder as the original runs it, then the loss from the
    hidden states; the output's logits are None, its other fields the original's."""
    values, extra = _bind(layout, args, kwargs)
    decoder = getattr(model, layout.body)
    positional = [values[name] for name in layout.body_args]
    keywords = {keyword: values[name] for keyword, name in layout.body_keywords}
    out = decoder(*positional, **keywords, **(extra if layout.body_kwargs else {}))
    hidden = out[0] if layout.hidden_index else out.last_hidden_state
    if layout.keep is not None:
        hidden = layout.keep(hidden, values["logits_to_keep"])
    head, _ = _check_head(model, layout)
    loss_kwargs = extra if layout.loss_kwargs else {}
    loss = causal_lm_loss(
        hidden, values["labels"], head.weight, bias=head.bias,
        scale=_scale(model, layout), softcap=_softcap(model, layout),
        num_items_in_batch=loss_kwargs.get("num_items_in_batch"),
        ignore_index=loss_kwargs.get("ignore_index", -100),
        shift_labels=loss_kwargs.get("shift_labels"), options=options,
    )  # fmt: skip
    fields = {name: getattr(out, attribute) for name, attribute in layout.fields}
    return layout.output(**{**fields, "loss": loss, "logits": None})


def _bind(
    layout: Layout, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The forward's named parameters (defaults filled in), and the rest of ``kwargs``."""
    if len(args) > layout.positional:
        raise TypeError(
            f"forward() takes {layout.positional} positional arguments but {len(args)} were given"
        )
    values = dict(layout.defaults)
    values.update(zip(layout.parameters, args, strict=False))
    extra = {}
    for name, value in kwargs.items():
        if name in layout.parameters[: len(args)]:
            raise TypeError(f"forward() got multiple values for argument '{name}'")
        if name in layout.parameters:
            values[name] = value
        elif layout.takes_kwargs:
            extra[name] = value
        else:
            raise TypeError(f"forward() got an unexpected keyword argument '{name}'")
    missing = [name for name in layout.parameters if name not in values]
    if missing:
        raise TypeError(f"forward() missing required arguments: {', '.join(missing)}")
    return values, extra


def _scale(model: Any, layout: Layout) -> float | torch.Tensor:
    """s, the product of the forward's scalings (1 / v for a division by v)."""
    scale: float | torch.Tensor = 1.0
    for step in layout.scales:
        value = _attribute(model, step.chain)
        scale = scale / value if step.divide else scale * value
    return scale


def _softcap(model: Any, layout: Layout) -> float | None:
    """c, the forward's soft-cap; None where it caps nothing."""
    if layout.softcap is None:
        return None
    value = _attribute(model, layout.softcap)
    if value is None and not layout.softcap_optional:
        raise ValueError(
            f"{type(model).__name__} caps its logits at self.{'.'.join(layout.softcap)}, "
            "which is None"
        )
    return None if value is None else float(value)


class BitsCallback(TrainerCallback):
    """A ``TrainerCallback`` that adds the seed's units to every log line: the loss in bits per
    token, the perplexity, and (given the evaluation text's size) bits per byte.

    A logged loss L in the unit of base b (nats, b = e, for transformers' loss and for a model
    patched with the default ``base``; the patch's ``base`` otherwise) gives::

        bits per token  = L · log2 b
        perplexity      = 2 ** (bits per token)   (the same in every base)
        bits per byte   = bits per token · T / B

    with T the evaluation set's target tokens and B = ``eval_bytes`` the bytes of its text.
    For every logged ``loss`` or ``*_loss`` value the line gains ``<key>_bits`` and the key with
    ``loss`` replaced by ``perplexity`` (``loss`` → ``perplexity``, ``eval_loss`` →
    ``eval_perplexity``), and with ``eval_bytes`` also ``eval_bits_per_byte``. T is
    ``eval_tokens``, or counted once from the evaluation batches' ``labels`` (positions after
    the first whose label is not -100) on a single process. The Trainer's ``eval_loss`` is the
    mean of its batches' means, so bits per byte is exact when every batch holds the same
    number of target tokens (packed blocks). The values go into the line the Trainer prints and
    into ``state.log_history``; loggers of ``report_to``, which the Trainer calls before user
    callbacks, do not see them.

    A loss with z-loss or label smoothing is not a log-likelihood, so a model patched with
    either is refused (ValueError) when training starts.

    Args:
        eval_bytes: B, the bytes of the evaluation text, for bits per byte; or None.
        eval_tokens: T, the evaluation set's target tokens; None: counted from the batches.

    >>> callback = BitsCallback()
    >>> logs = {"loss": 2.0}                  # nats per token, as the Trainer logs it
    >>> callback.on_log(None, transformers.TrainerState(), None, logs=logs)
    >>> round(logs["loss_bits"], 4), round(logs["perplexity"], 4)   # 2 / ln 2 bits, e ** 2
    (2.8854, 7.3891)
    """

    def __init__(self, eval_bytes: int | None = None, eval_tokens: int | None = None) -> None:
        for name, value in (("eval_bytes", eval_bytes), ("eval_tokens", eval_tokens)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"`{name}` must be a whole number or None; got {value!r}")
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be ≥ 1; got {value!r}")
        self.eval_bytes, self.eval_tokens = eval_bytes, eval_tokens

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Refuse a model whose loss is not a log-likelihood, before any step.

        Args:
            args, state, control: the Trainer's, as every callback gets them.
            **kwargs: the Trainer's objects; ``model`` is the one read.
        """
        _bits_per_unit(kwargs.get("model"))

    def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        """Add the bits, the perplexities and the bits per byte to the line being logged.

        Args:
            args, state, control: the Trainer's, as every callback gets them.
            **kwargs: ``logs`` (the line, updated in place), ``model``, and
                ``eval_dataloader`` (to count the target tokens).
        """
        logs = kwargs.get("logs")
        if not logs:
            return
        per_unit = _bits_per_unit(kwargs.get("model"))
        added: dict[str, float] = {}
        for key, value in logs.items():
            if (key == "loss" or key.endswith("_loss")) and isinstance(value, int | float):
                bits = float(value) * per_unit
                added[f"{key}_bits"] = bits
                added[f"{key[:-4]}perplexity"] = math.inf if bits > 1000 else 2.0**bits
        if self.eval_bytes is not None and "eval_loss_bits" in added:
            tokens = self._tokens(args, kwargs.get("eval_dataloader"))
            added["eval_bits_per_byte"] = added["eval_loss_bits"] * tokens / self.eval_bytes
        logs.update(added)
        if state.log_history:  # the Trainer appended this line's copy just before
            state.log_history[-1].update(added)

    def _tokens(self, args: Any, batches: Any) -> int:
        """T: ``eval_tokens``, or the target tokens of the evaluation batches, counted once."""
        if self.eval_tokens is None:
            if getattr(args, "world_size", 1) > 1:
                raise ValueError(
                    "BitsCallback needs `eval_tokens` on several processes: each one sees only "
                    "its share of the evaluation batches"
                )
            if batches is None:
                raise ValueError("BitsCallback needs `eval_tokens`: no evaluation batches seen")
            self.eval_tokens = _count_targets(batches)
        return self.eval_tokens


def _bits_per_unit(model: Any) -> float:
    """log2 b, bits per unit of the loss ``model`` logs; a ValueError for a loss with extras."""
    options = patch_options(model) if model is not None else None
    if options is None:
        return 1.0 / math.log(2.0)
    if not options.is_nll:
        raise ValueError(
            "BitsCallback reports the negative log-likelihood, but the model is patched with "
            f"z_loss={options.z_loss} and label_smoothing={options.label_smoothing}: its loss "
            "is not one"
        )
    return math.log2(options.base)


def _count_targets(batches: Any) -> int:
    """Positions after the first of each row whose label is not -100, over ``batches``."""
    total = 0
    for batch in batches:
        labels = batch.get("labels") if isinstance(batch, dict) else None
        if labels is None:
            raise ValueError("BitsCallback counts target tokens from `labels`; a batch has none")
        total += int((labels[..., 1:] != -100).sum())
    return total
