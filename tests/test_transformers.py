"""crossent.integrations.transformers against transformers' own loss, on tiny random models.

Every model is built from a config (nothing is downloaded): 2 layers, hidden size 64, an odd
vocabulary of 101 words. Its head is scaled up (and a bias drawn where there is one) so that
the logits span several nats and soft-capping and logit scaling change the loss.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import modeling_outputs  # noqa: E402
from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES  # noqa: E402

from crossent.integrations import transformers as hf  # noqa: E402
from crossent.torch import cross_entropy  # noqa: E402

VOCAB = 101  # odd: no chunk or tile divides it
LAYERS = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2}
HEADS = {"num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64}
TOKENS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}  # inside the vocabulary


def _config(model_type: str) -> Any:
    """A tiny config of ``model_type`` with its head arithmetic switched on."""
    if model_type == "gpt2":
        sizes = {"n_embd": 64, "n_layer": 2, "n_head": 4, "n_positions": 64}
        drop = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
        return transformers.GPT2Config(vocab_size=VOCAB, **sizes, **drop, **TOKENS)
    extra: dict[str, Any] = {
        "gemma2": {"head_dim": 16, "final_logit_softcapping": 4.0},
        "gemma3_text": {"head_dim": 16, "final_logit_softcapping": 4.0, "sliding_window": 8},
        "qwen3": {"head_dim": 16},
        "cohere": {"logit_scale": 0.25},
        "granite": {"logits_scaling": 3.0},
        "llama-tied": {"tie_word_embeddings": True},
    }.get(model_type, {})
    kind = "llama" if model_type == "llama-tied" else model_type
    sizes = {"vocab_size": VOCAB, **LAYERS, **HEADS, **TOKENS}
    return transformers.AutoConfig.for_model(kind, **sizes, **extra)


def _model(model_type: str, seed: int = 0) -> Any:
    """A tiny model of ``model_type`` in eval mode (no dropout), logits spanning several nats."""
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(_config(model_type)).eval()
    head = model.get_output_embeddings()
    with torch.no_grad():
        head.weight.mul_(20.0)
        if head.bias is not None:
            head.bias.normal_(0.0, 5.0)  # as large as the logits: it shows in the loss
    return model


def _batch(seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """input ids, labels with -100 at random places and after each row's end, attention mask."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (3, 19), generator=generator)
    labels = ids.clone()
    labels[torch.rand(ids.shape, generator=generator) < 0.2] = -100
    mask = torch.ones_like(ids)
    for row, length in enumerate((19, 14, 7)):  # right padding, as a collator makes it
        labels[row, length:] = -100
        mask[row, length:] = 0
    return ids, labels, mask


def _loss_and_grads(model: Any, **inputs: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    outputs = model(**inputs)
    outputs.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return outputs.loss.detach(), grads


def _assert_grads_close(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    """Every parameter's gradient within 1e-4 of the largest entry of the reference's."""
    assert got.keys() == want.keys()
    for name, grad in want.items():
        scale = grad.abs().max().clamp_min(1e-12)
        error = (got[name] - grad).abs().max() / scale
        assert error < 1e-4, f"{name}: relative error {error:.2e}"


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from a second thread, and on a busy machine its workers spin
    waiting for each other (a 30-step Trainer run: 0.7 s on one thread, up to 16 s on two)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def unpatch_on_exit() -> Iterator[list[Any]]:
    """Targets a test patches at class level, given back whatever the test does."""
    targets: list[Any] = []
    yield targets
    for target in targets:
        hf.unpatch(target)


FAMILIES = (*hf.TESTED, "llama-tied")


@pytest.mark.parametrize("model_type", FAMILIES)
@pytest.mark.parametrize("accumulated", [None, 37], ids=["mean", "num_items_in_batch"])
def test_loss_and_every_gradient_match_transformers(
    model_type: str, accumulated: int | None
) -> None:
    model = _model(model_type)
    ids, labels, mask = _batch()
    inputs: dict[str, Any] = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    if accumulated is not None:  # as the Trainer passes it: a tensor, the whole batch's count
        inputs["num_items_in_batch"] = torch.tensor(accumulated)
    want, want_grads = _loss_and_grads(model, **inputs)
    hf.patch(model)
    got, got_grads = _loss_and_grads(model, **inputs)
    assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (got.item(), want.item())
    _assert_grads_close(got_grads, want_grads)


@pytest.mark.parametrize(
    ("model_type", "skipped"),
    [("cohere", "scale"), ("granite", "scale"), ("gemma2", "cap"), ("gemma3_text", "cap"),
     ("phi", "bias")],
)  # fmt: skip
def test_the_head_arithmetic_matters_in_these_models(model_type: str, skipped: str) -> None:
    """A patch that skipped the head's scaling, cap or bias would miss transformers' loss by
    far here, so the matches above do check that arithmetic."""
    model = _model(model_type)
    ids, labels, _ = _batch()
    want = model(ids, labels=labels).loss
    hidden = model.base_model(ids).last_hidden_state
    head = model.get_output_embeddings()
    bias = None if skipped == "bias" else head.bias
    plain = hf.causal_lm_loss(hidden, labels, head.weight, bias=bias)  # no scale, no cap
    assert abs(plain - want) > 0.1 * want


@pytest.mark.parametrize("model_type", ["llama", "gpt2", "gemma3_text", "phi"])
def test_generation_and_forward_without_labels_are_unchanged(model_type: str) -> None:
    model = _model(model_type)
    ids, _, mask = _batch()
    before = model(ids, attention_mask=mask).logits
    kept = model(ids, attention_mask=mask, logits_to_keep=2).logits
    generate = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    generated = model.generate(ids[:1, :5], **generate)
    hf.patch(model)
    assert torch.equal(model(ids, attention_mask=mask).logits, before)
    assert torch.equal(model(ids, attention_mask=mask, logits_to_keep=2).logits, kept)
    assert torch.equal(model.generate(ids[:1, :5], **generate), generated)


def test_outputs_with_labels_keep_every_field_but_the_logits() -> None:
    model = _model("llama")
    ids, labels, mask = _batch()
    inputs = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    want = model(**inputs, output_hidden_states=True)
    hf.patch(model)
    got = model(**inputs, output_hidden_states=True)
    assert got.logits is None
    assert [key for key in want if key != "logits"] == list(got.keys())
    for mine, theirs in zip(got.hidden_states, want.hidden_states, strict=True):
        assert torch.equal(mine, theirs)
    as_tuple = model(**inputs, return_dict=False)  # transformers drops None fields
    assert isinstance(as_tuple, tuple)
    assert torch.allclose(as_tuple[0], want.loss, rtol=1e-5)
    positional = model(ids, mask, None, None, None, labels)  # labels by position
    assert torch.allclose(positional.loss, want.loss, rtol=1e-5)
    assert positional.logits is None


def test_extras_z_loss_label_smoothing_and_bits() -> None:
    """The patched loss with extras equals crossent's loss on the model's own logits."""
    model = _model("gemma2")
    ids, labels, _ = _batch()
    logits = model(ids).logits[:, :-1].reshape(-1, VOCAB)  # soft-capped by the model
    targets = labels[:, 1:].reshape(-1)
    extras = {"z_loss": 1e-3, "label_smoothing": 0.1, "base": 2.0}
    want = cross_entropy(logits, targets, **extras)
    hf.patch(model, **extras)
    assert hf.patch_options(model) == hf.LossOptions(**extras)
    assert torch.allclose(model(ids, labels=labels).loss, want, rtol=1e-5)
    hf.patch(model, base=2)  # patching again replaces the options
    bits = model(ids, labels=labels).loss
    nats = cross_entropy(logits, targets)
    assert torch.allclose(bits, nats / math.log(2), rtol=1e-5)


def test_unpatch_and_the_context_manager_restore_the_forward() -> None:
    model = _model("qwen2")
    ids, labels, _ = _batch()
    hf.patch(model)
    assert model(ids, labels=labels).logits is None
    hf.unpatch(model)
    assert "forward" not in vars(model)
    assert model.forward.__func__ is type(model).forward
    assert model(ids, labels=labels).logits is not None
    with hf.patched(model, base=2) as same:
        assert same is model
        assert hf.patch_options(model) == hf.LossOptions(base=2)
        assert model(ids, labels=labels).logits is None
    assert hf.patch_options(model) is None
    hf.patch(model, z_loss=1e-4)
    with hf.patched(model):  # a patch from before the block comes back after it
        assert hf.patch_options(model) == hf.LossOptions()
    assert hf.patch_options(model) == hf.LossOptions(z_loss=1e-4)


def test_patch_by_model_type_patches_models_made_afterwards(unpatch_on_exit: list[Any]) -> None:
    cls = transformers.LlamaForCausalLM
    original = cls.forward
    ids, labels, _ = _batch()
    want = _model("llama")(ids, labels=labels).loss
    unpatch_on_exit.append("llama")
    assert hf.patch("llama", base=math.e) == "llama"
    model = _model("llama")
    assert hf.patch_options(model) == hf.LossOptions()
    got = model(ids, labels=labels)
    assert got.logits is None
    assert torch.allclose(got.loss, want, rtol=1e-5)
    hf.patch(model, base=2)  # a model of a patched class patched on its own, then given back
    assert torch.allclose(model(ids, labels=labels).loss, want / math.log(2), rtol=1e-5)
    hf.unpatch(model)
    assert hf.patch_options(model) == hf.LossOptions()
    with hf.patched(model, base=2):  # the class's patch is not the model's own: none after
        assert hf.patch_options(model) == hf.LossOptions(base=2)
    assert "forward" not in vars(model)
    hf.unpatch("llama")
    assert cls.forward is original
    assert model(ids, labels=labels).logits is not None


def test_patch_unwraps_compiled_and_inherited_forwards(unpatch_on_exit: list[Any]) -> None:
    class Subclass(transformers.MistralForCausalLM):  # forward inherited, not its own
        pass

    unpatch_on_exit.append(Subclass)
    hf.patch(Subclass)
    assert "forward" in vars(Subclass)
    hf.unpatch(Subclass)
    assert "forward" not in vars(Subclass)
    model = _model("mistral")
    compiled = torch.compile(model, backend="eager")
    assert hf.patch(compiled) is compiled
    assert hf.patch_options(model) == hf.LossOptions()


# Forwards that break the rule, each in one way. Their module binds the names transformers'
# forwards use, so only the rule itself can refuse them.
CausalLMOutputWithPast = modeling_outputs.CausalLMOutputWithPast


class _HiddenScaled(transformers.LlamaForCausalLM):
    def forward(
        self, input_ids: Any = None, labels: Any = None, logits_to_keep: Any = 0, **kwargs: Any
    ) -> Any:
        outputs = self.model(input_ids=input_ids, **kwargs)
        hidden_states = outputs.last_hidden_state
        slice_indices = (
            slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        )
        logits = self.lm_head(hidden_states[:, slice_indices, :] * 2)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits)


class _AuxiliaryLoss(transformers.LlamaForCausalLM):
    def forward(
        self, input_ids: Any = None, labels: Any = None, logits_to_keep: Any = 0, **kwargs: Any
    ) -> Any:
        outputs = self.model(input_ids=input_ids, **kwargs)
        hidden_states = outputs.last_hidden_state
        slice_indices = (
            slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        )
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.vocab_size, **kwargs)
            loss += 0.01 * hidden_states.square().mean()
        return CausalLMOutputWithPast(loss=loss, logits=logits)


class _CapThenScale(transformers.LlamaForCausalLM):
    def forward(
        self, input_ids: Any = None, labels: Any = None, logits_to_keep: Any = 0, **kwargs: Any
    ) -> Any:
        outputs = self.model(input_ids=input_ids, **kwargs)
        hidden_states = outputs.last_hidden_state
        slice_indices = (
            slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        )
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        logits = logits / self.config.cap
        logits = torch.tanh(logits)
        logits = logits * self.config.cap
        logits = logits * self.config.scale
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits)


class _OlderLayout(transformers.LlamaForCausalLM):
    """The layout of transformers 5.0 (slice_indices, outputs[0]), a scaling, a bare cap."""

    def forward(
        self,
        input_ids: Any = None,
        attention_mask: Any = None,
        labels: Any = None,
        logits_to_keep: Any = 0,
        **kwargs: Any,
    ) -> Any:
        outputs = self.model(input_ids, attention_mask=attention_mask, **kwargs)
        hidden_states = outputs[0]
        slice_indices = (
            slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        )
        logits = self.lm_head(hidden_states[:, slice_indices, :])
        logits = logits * self.config.scale
        logits = logits / self.config.cap
        logits = torch.tanh(logits)
        logits = logits * self.config.cap
        loss = None
        if labels is not None:
            loss = self.loss_function(
                logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


@pytest.mark.parametrize(
    ("cls", "statement"),
    [
        (_HiddenScaled, "logits = self.lm_head(hidden_states[:, slice_indices, :] * 2)"),
        (_AuxiliaryLoss, "if labels is not None:"),
        (_CapThenScale, "logits = logits * self.config.scale"),
    ],
)
def test_a_forward_outside_the_rule_is_refused_naming_the_statement(
    cls: type, statement: str
) -> None:
    original = vars(cls)["forward"]
    with pytest.raises(hf.UnsupportedModelError, match=cls.__name__) as raised:
        hf.patch(cls)
    message = str(raised.value)
    assert f"`{statement}" in message
    assert "test_transformers.py, line" in message
    assert "Tested model types: cohere, gemma2" in message
    assert vars(cls)["forward"] is original


def test_a_new_forward_that_follows_the_rule_is_patched_exactly() -> None:
    """The generic path: a forward crossent has never seen, in the older layout."""
    config = _config("llama")
    config.scale, config.cap = 0.5, 4.0
    torch.manual_seed(0)
    model = _OlderLayout(config).eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20.0)
    ids, labels, mask = _batch()
    inputs = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    want, want_grads = _loss_and_grads(model, **inputs)
    hf.patch(model)
    got, got_grads = _loss_and_grads(model, **inputs)
    assert torch.allclose(got, want, rtol=1e-5)
    _assert_grads_close(got_grads, want_grads)
    assert torch.equal(model(ids).logits, _OlderLayout.forward(model, ids).logits)


def test_the_rule_reads_every_causal_lm_of_transformers() -> None:
    """Every causal-LM class transformers maps a model type to is read without an error other
    than a refusal, and the tested ones are accepted (95 of 200 are, in transformers 5.25)."""
    accepted = []
    for model_type, name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.items():
        cls = getattr(transformers, name)
        try:
            hf._layout(cls, cls.forward)
        except hf.UnsupportedModelError:
            continue
        accepted.append(model_type)
    assert set(hf.TESTED) <= set(accepted)
    assert len(accepted) < len(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)  # the rule does refuse


def test_mixture_of_experts_with_an_auxiliary_loss_is_refused() -> None:
    """Mixtral adds its routers' loss to the loss; its forward already differs before that."""
    with pytest.raises(hf.UnsupportedModelError, match=r"MixtralForCausalLM\.forward \("):
        hf.patch("mixtral")
    assert "forward" in vars(transformers.MixtralForCausalLM)
    assert hf.patch_options("mixtral") is None


def test_a_head_or_loss_the_patch_cannot_follow_is_refused() -> None:
    class Head(torch.nn.Linear):
        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            return super().forward(hidden) * 2

    model = _model("llama")
    original = model.lm_head
    model.lm_head = Head(64, VOCAB, bias=False)
    with pytest.raises(hf.UnsupportedModelError, match=r"plain torch.nn.Linear .* got Head"):
        hf.patch(model)
    model.lm_head = original
    model.loss_function = lambda *args, **kwargs: 0.0
    with pytest.raises(hf.UnsupportedModelError, match="loss_function must be transformers'"):
        hf.patch(model)
    assert "forward" not in vars(model)


def test_a_class_patch_checks_each_model_when_it_runs(unpatch_on_exit: list[Any]) -> None:
    unpatch_on_exit.append("phi3")
    hf.patch("phi3")
    model = _model("phi3")
    model.lm_head = torch.nn.Linear(64, VOCAB + 3, bias=False)
    ids, labels, _ = _batch()
    with pytest.raises(
        ValueError, match=r"head has 104 outputs but its loss is given vocab_size 101"
    ):
        model(ids, labels=labels)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (
            lambda: hf.patch("no-such-model"),
            ValueError,
            r"'no-such-model' is not a causal-LM .* llama",
        ),
        (
            lambda: hf.patch(torch.nn.Linear(2, 2)),
            TypeError,
            "`target` must be a transformers model",
        ),
        (lambda: hf.patch(int), TypeError, "`target` must be a transformers model class"),
        (
            lambda: hf.patch("llama", z_loss=-1.0),
            ValueError,
            r"`z_loss` must be a finite number ≥ 0",
        ),
        (
            lambda: hf.patch("llama", label_smoothing=2),
            ValueError,
            r"`label_smoothing` must be in \[0, 1\]",
        ),
        (lambda: hf.patch("llama", base=1), ValueError, "`base`"),
        (lambda: hf.BitsCallback(eval_bytes=0), ValueError, "`eval_bytes` must be ≥ 1; got 0"),
        (
            lambda: hf.BitsCallback(eval_tokens=2.5),
            TypeError,
            "`eval_tokens` must be a whole number",
        ),
        (
            lambda: hf.causal_lm_loss(torch.zeros(1, 2, 3), None, torch.zeros(4, 3)),
            ValueError,
            "`labels` or `shift_labels`",
        ),
    ],
)
def test_errors_name_the_argument_and_the_value(
    call: Callable[[], Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        call()
    assert hf.patch_options("llama") is None  # nothing patched on the way


def test_causal_lm_loss_shift_labels_and_an_empty_mean() -> None:
    generator = torch.Generator().manual_seed(3)
    hidden, weight = torch.randn(2, 6, 8, generator=generator), torch.randn(VOCAB, 8)
    labels = torch.randint(0, VOCAB, (2, 6), generator=generator)
    shifted = torch.nn.functional.pad(labels[:, 1:], (0, 1), value=-100)
    by_labels = hf.causal_lm_loss(hidden, labels, weight, num_items_in_batch=7)
    by_shift = hf.causal_lm_loss(hidden, None, weight, shift_labels=shifted, num_items_in_batch=7)
    want = torch.nn.functional.cross_entropy(
        (hidden @ weight.T).reshape(-1, VOCAB), shifted.reshape(-1), reduction="sum"
    )
    assert torch.allclose(by_labels, want / 7, rtol=1e-5)
    assert torch.equal(by_labels, by_shift)
    nothing = torch.full_like(labels, -100)
    assert hf.causal_lm_loss(hidden, nothing, weight).item() == 0.0  # transformers: NaN


def test_gradient_checkpointing() -> None:
    model = _model("llama")
    enable = getattr(model, "activation_checkpointing_enable", None)  # its name since 5.x
    (enable or model.gradient_checkpointing_enable)()
    model.train()  # checkpointing runs in training mode; the tiny configs have no dropout
    mlp, calls = model.model.layers[0].mlp, []
    forward = mlp.forward
    mlp.forward = lambda *args: calls.append(1) or forward(*args)  # hooks miss the recompute
    ids, labels, mask = _batch()
    inputs = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    want, want_grads = _loss_and_grads(model, **inputs)
    hf.patch(model)
    got, got_grads = _loss_and_grads(model, **inputs)
    assert len(calls) == 4  # a layer's MLP ran again in each backward: checkpointing was on
    assert torch.allclose(got, want, rtol=1e-5)
    _assert_grads_close(got_grads, want_grads)


def _compiled_matches(backend: str) -> None:
    """A compiled patched model's loss and gradients equal the eager unpatched one's, and the
    whole model, crossent's loss included, is one graph: no break."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = _model("qwen3")
    ids, labels, mask = _batch()
    inputs = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    want, want_grads = _loss_and_grads(model, **inputs)
    hf.patch(model)
    compiled = torch.compile(model, backend=backend)
    got, got_grads = _loss_and_grads(compiled, **inputs)
    assert torch.allclose(got, want, rtol=1e-5)
    _assert_grads_close(
        {name.removeprefix("_orig_mod."): grad for name, grad in got_grads.items()}, want_grads
    )
    assert not counters["graph_break"], dict(counters["graph_break"])


def test_torch_compile_of_the_patched_model() -> None:
    """aot_eager: dynamo's tracing and AOT autograd, without a C++ compiler."""
    _compiled_matches("aot_eager")


@pytest.mark.slow
def test_torch_compile_of_the_patched_model_with_inductor() -> None:
    _compiled_matches("inductor")


def test_bf16_autocast_computes_the_head_in_bf16_as_transformers_does() -> None:
    """Under autocast the head's logits are bfloat16 in both; the patched loss is as close to
    the float32 loss as transformers' own, and close to it."""
    model = _model("llama")
    ids, labels, mask = _batch()
    inputs = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    exact, _ = _loss_and_grads(model, **inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        theirs, their_grads = _loss_and_grads(model, **inputs)
        hf.patch(model)
        mine, my_grads = _loss_and_grads(model, **inputs)
    assert mine.dtype == torch.float32
    assert abs(mine - exact) <= abs(theirs - exact) + 1e-4 * exact
    assert abs(mine - theirs) <= 1e-4 * exact  # the same bfloat16 logits, rounded alike
    for name, grad in their_grads.items():  # (bit-identical here; 2 bfloat16 steps allowed)
        error = (my_grads[name] - grad).abs().max() / grad.abs().max()
        assert error < 8e-3, f"{name}: relative error {error:.2e}"


def _learnable(rows: int, length: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """Rows that count up by a step of their own (mod VOCAB), right-padded with -100 labels,
    so a model can learn them and rows carry different numbers of targets."""
    generator = torch.Generator().manual_seed(seed)
    examples = []
    for _ in range(rows):
        start, step = torch.randint(0, VOCAB, (2,), generator=generator).tolist()
        ids = (start + (step % 5 + 1) * torch.arange(length)) % VOCAB
        used = int(torch.randint(length // 2, length + 1, (1,), generator=generator))
        labels = ids.clone()
        labels[used:] = -100
        mask = (torch.arange(length) < used).long()
        examples.append({"input_ids": ids, "labels": labels, "attention_mask": mask})
    return examples


def _train(model: Any, folder: Path, callbacks: list[Any], steps: int = 30, **data: Any) -> Any:
    """``steps`` optimiser steps of 4 accumulated micro-batches of 2 rows; a loss logged every
    step."""
    args = transformers.TrainingArguments(
        output_dir=str(folder), max_steps=steps, per_device_train_batch_size=2,
        gradient_accumulation_steps=4, learning_rate=3e-3, lr_scheduler_type="constant",
        logging_steps=1, report_to="none", save_strategy="no", use_cpu=True, seed=0,
        disable_tqdm=True, dataloader_num_workers=0,
    )  # fmt: skip
    trainer = transformers.Trainer(model=model, args=args, callbacks=callbacks, **data)
    trainer.train()
    return trainer


def test_trainer_loss_curves_agree_step_by_step_with_gradient_accumulation(
    tmp_path: Path,
) -> None:
    data = {"train_dataset": _learnable(64, 16, seed=4)}
    theirs = _train(_model("llama").train(), tmp_path / "theirs", [], **data)
    model = hf.patch(_model("llama").train())
    mine = _train(model, tmp_path / "mine", [], **data)
    assert mine.model_accepts_loss_kwargs  # so the Trainer passed num_items_in_batch
    curves = [[h["loss"] for h in t.state.log_history if "loss" in h] for t in (theirs, mine)]
    assert len(curves[0]) == len(curves[1]) == 30
    for step, (want, got) in enumerate(zip(*curves, strict=True)):
        assert got == pytest.approx(want, rel=1e-4), f"step {step + 1}"
    assert curves[1][-1] < 0.5 * curves[1][0]  # it learns


def test_bits_callback_adds_bits_perplexity_and_bits_per_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    evaluation = _learnable(12, 16, seed=5)
    tokens = sum(int((row["labels"][1:] != -100).sum()) for row in evaluation)
    text_bytes = 3 * tokens  # as if each token stood for three bytes of text
    model = hf.patch(_model("llama").train(), base=2)  # a loss logged in bits
    data = {"train_dataset": _learnable(64, 16, seed=4), "eval_dataset": evaluation}
    callback = hf.BitsCallback(eval_bytes=text_bytes)
    trainer = _train(model, tmp_path, [callback], steps=5, **data)
    metrics = trainer.evaluate()
    assert metrics["eval_loss_bits"] == metrics["eval_loss"]  # already bits: log2 2 = 1
    assert metrics["eval_bits_per_byte"] == pytest.approx(metrics["eval_loss"] / 3, rel=1e-12)
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert len(logged) == 5
    for line in logged:
        assert line["loss_bits"] == line["loss"]
        assert line["perplexity"] == pytest.approx(2 ** line["loss"], rel=1e-12)
    assert "'loss_bits'" in capsys.readouterr().out  # in the line the Trainer prints
    hf.unpatch(model)  # transformers' loss, in nats
    metrics = trainer.evaluate()
    assert metrics["eval_loss_bits"] == pytest.approx(metrics["eval_loss"] / math.log(2))
    assert metrics["eval_perplexity"] == pytest.approx(math.exp(metrics["eval_loss"]))


def test_bits_callback_refuses_a_loss_that_is_not_a_likelihood(tmp_path: Path) -> None:
    model = hf.patch(_model("llama"), z_loss=1e-4)
    with pytest.raises(ValueError, match=r"not one"):
        _train(model, tmp_path, [hf.BitsCallback()], 1, train_dataset=_learnable(8, 8, seed=0))


def _data_parallel_step(rank: int, world: int) -> list[Any]:
    """One rank's share of a batch through DistributedDataParallel: transformers' loss and
    gradients, then the patched model's, with the whole batch's target count."""
    model = _model("llama")
    ids, labels, mask = _batch()
    count = torch.tensor(int((labels[:, 1:] != -100).sum()))
    mine = slice(rank, None, world)
    inputs = {"input_ids": ids[mine], "labels": labels[mine], "attention_mask": mask[mine]}
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    results = [*_loss_and_grads(ddp, **inputs, num_items_in_batch=count)]
    hf.patch(ddp)
    return [*results, *_loss_and_grads(ddp, **inputs, num_items_in_batch=count)]


@pytest.mark.timeout(300)
def test_distributed_data_parallel_per_rank_loss_and_averaged_gradients() -> None:
    from crossent.torch.distributed import launch

    results = launch(_data_parallel_step, 2, timeout=240)
    for want, want_grads, got, got_grads in results:
        assert torch.allclose(got, want, rtol=1e-5)
        _assert_grads_close(got_grads, want_grads)
    assert not torch.allclose(results[0][0], results[1][0])  # each rank its own loss
    assert torch.equal(
        results[0][3]["module.lm_head.weight"], results[1][3]["module.lm_head.weight"]
    )


def test_importing_crossent_does_not_import_transformers() -> None:
    code = (
        "import sys, crossent, crossent.torch, crossent.integrations; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'accelerate')))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_without_transformers_the_integration_says_how_to_install_it() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["transformers"] = None  # as if it were not installed
        import crossent.integrations.transformers
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0
    assert "ImportError: crossent.integrations.transformers needs" in done.stderr
    assert "pip install 'crossent[transformers]'" in done.stderr


def test_the_example_trains_and_reports_bits_per_byte() -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "train_tiny_lm.py"
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(example), "--steps", "2"],
        capture_output=True, text=True, env=environment, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "'eval_bits_per_byte'" in done.stdout
    assert "bits per byte:" in done.stdout
    assert "lzma" in done.stdout


def test_bf16_weights_give_transformers_loss_to_bf16_precision() -> None:
    """A model held in bfloat16: the logits are bfloat16 in both, the loss float32."""
    model = _model("llama").to(torch.bfloat16)
    ids, labels, mask = _batch()
    inputs = {"input_ids": ids, "labels": labels, "attention_mask": mask}
    theirs, their_grads = _loss_and_grads(model, **inputs)
    hf.patch(model)
    mine, my_grads = _loss_and_grads(model, **inputs)
    assert mine.dtype == theirs.dtype == torch.float32
    assert abs(mine - theirs) <= 1e-4 * theirs  # both round the same bfloat16 logits
    for name, grad in their_grads.items():  # (bit-identical here; 2 bfloat16 steps allowed)
        error = (my_grads[name].float() - grad.float()).abs().max() / grad.float().abs().max()
        assert error < 8e-3, f"{name}: relative error {error:.2e}"
