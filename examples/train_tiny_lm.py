"""Train a tiny Llama on Python's own documentation with crossent's loss, reported in bits.

    pip install 'crossent[transformers]'
    python examples/train_tiny_lm.py             # 200 steps: 1 to 3 minutes on 2 CPU cores
    python examples/train_tiny_lm.py --steps 20  # a quick look

Nothing is downloaded. The text is the help topics that ship with every Python (the module
``pydoc_data.topics``, what ``help("assert")`` prints), about 470 KB of English and code; the
tokens are its bytes (a vocabulary of 256), so bits per token are bits per byte. The model is
a 2-layer Llama built from a config. One line, ``patch(model)``, makes its loss come from
``crossent.torch.linear_cross_entropy`` without the logits; ``BitsCallback`` adds the loss in
bits, the perplexity and the held-out bits per byte to every line the Trainer prints. At the
end the held-out text's bits per byte are set beside what gzip and lzma need for the same
bytes, and the model writes a few lines of its own (sampled: ``generate`` is untouched).
"""

from __future__ import annotations

import argparse
import gzip
import lzma
import tempfile
from pydoc_data.topics import topics

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from crossent.integrations.transformers import BitsCallback, patch

BLOCK = 128  # bytes per training example


def text() -> bytes:
    """Python's help topics, in a fixed order, as UTF-8 bytes."""
    return "\n\n".join(topics[name] for name in sorted(topics)).encode()


def blocks(data: bytes) -> list[dict[str, torch.Tensor]]:
    """Consecutive blocks of BLOCK bytes as examples; the model shifts the labels itself, so
    each block's first byte is context and the other BLOCK − 1 are predicted."""
    ids = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
    rows = ids[: len(ids) // BLOCK * BLOCK].view(-1, BLOCK)
    return [{"input_ids": row, "labels": row} for row in rows]


def model() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=256, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=BLOCK,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="optimiser steps (200)")
    parser.add_argument("--seed", type=int, default=0)
    options = parser.parse_args()
    torch.manual_seed(options.seed)
    data = text()
    cut = len(data) - len(data) // 20  # the last 5% is held out
    train, held_out = blocks(data[:cut]), blocks(data[cut:])
    scored = len(held_out) * (BLOCK - 1)  # held-out bytes the model predicts
    lm = patch(model())  # the one line: crossent's loss, no logits held
    with tempfile.TemporaryDirectory() as folder:
        arguments = TrainingArguments(
            output_dir=folder, max_steps=options.steps, per_device_train_batch_size=16,
            learning_rate=3e-3, warmup_steps=min(30, options.steps // 10),
            lr_scheduler_type="cosine", logging_steps=max(1, options.steps // 10),
            eval_strategy="steps", eval_steps=max(1, options.steps // 3),
            per_device_eval_batch_size=32, report_to="none", save_strategy="no",
            disable_tqdm=True, use_cpu=True, seed=options.seed,
        )  # fmt: skip
        callback = BitsCallback(eval_bytes=scored, eval_tokens=scored)
        trainer = Trainer(
            model=lm, args=arguments, train_dataset=train, eval_dataset=held_out,
            callbacks=[callback],
        )  # fmt: skip
        trainer.train()
        final = trainer.evaluate()
    report(final["eval_bits_per_byte"], held_out)
    sample(lm, data[cut : cut + 24])


def report(bits_per_byte: float, held_out: list[dict[str, torch.Tensor]]) -> None:
    """The model's held-out bits per byte beside two compressors' on the same bytes."""
    raw = b"".join(bytes(row["input_ids"].tolist()) for row in held_out)
    print(f"\nheld-out text, {len(raw):,} bytes, in bits per byte:")
    print(f"  this model           {bits_per_byte:.3f}   (its cross entropy on these bytes)")
    for name, compress in (("gzip -9", gzip.compress), ("lzma", lzma.compress)):
        print(f"  {name:<20} {8 * len(compress(raw)) / len(raw):.3f}")
    print("  a uniform guess      8.000")


def sample(lm: LlamaForCausalLM, prompt: bytes) -> None:
    """A few lines of the model's own after ``prompt``, sampled at temperature 0.7."""
    ids = torch.tensor([list(prompt)])
    settings = {"do_sample": True, "temperature": 0.7, "top_k": 0, "pad_token_id": 0}
    out = lm.eval().generate(ids, max_new_tokens=BLOCK - len(prompt), **settings)
    print("\nthe model goes on from", repr(prompt.decode(errors="replace")), ":\n")
    print(bytes(out[0, len(prompt) :].tolist()).decode(errors="replace"))


if __name__ == "__main__":
    main()
