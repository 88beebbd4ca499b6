"""Benchmark a Hugging Face causal LM's training step with and without crossent's patch.

What is measured
    One training step of a Llama model built from a config: ``outputs = model(input_ids,
    labels=labels)``, ``outputs.loss.backward()``; every parameter's gradient is freed
    (``zero_grad(set_to_none=True)``) before the next step, so each step allocates them, as in
    training. No optimiser: its work and memory are the same with and without the patch. Each
    provider runs in its own process (benchmarks/_harness.py); 2 warm-up steps, then
    ``--repeat`` timed ones: the median and the 20th / 80th percentiles, and tokens per second.

Providers
    transformers   the model as transformers builds it: its forward makes the B·T × V logits
                   and its loss (``ForCausalLMLoss``) upcasts them to float32
    crossent       the same model after ``crossent.integrations.transformers.patch(model)``:
                   the loss from the last hidden states by crossent's linear-head loss

Cases
    CPU (default), float32: batch 4, sequence 512 (2,048 tokens), hidden 256, vocabulary
        32,000, 2 decoder layers (intermediate 688, 4 heads); the fp32 logits are 262 MB.
    GPU (--device cuda), bfloat16 weights: batch 4, sequence 2,048 (8,192 tokens), a
        Llama-3-8B-shaped model cut to 2 decoder layers: hidden 4,096, vocabulary 128,256,
        intermediate 14,336, 32 heads, 8 key-value heads; the fp32 logits are 4.2 GB.
    --quick: batch 2, sequence 64, hidden 64, vocabulary 2,000, a smoke test.
    Token ids are uniform random (seed 0); labels are the ids (every position a target).

Memory
    "extra" is the peak during the timed steps (CPU: resident set size; CUDA:
    torch.cuda.max_memory_allocated) above what the process held after the warm-up: the model,
    the inputs and the last warm-up step's parameter gradients, which the next step frees and
    allocates again. So it is the step's memory beyond the model and its gradients: the
    activations, the logits and everything the loss makes. The issue's target: crossent's extra
    below transformers' by at least the fp32 logits and their gradient (2 · B · T · V · 4
    bytes), and its step no slower.

The answer is checked
    Both providers' losses and the norms of the head's weight gradient agree to 1e-4 (float32)
    or 2e-2 (bfloat16); a mismatch is logged and written as answer_ok = False.

Usage:
    python benchmarks/bench_transformers.py                 # CPU, about 2 minutes on 2 cores
    python benchmarks/bench_transformers.py --device cuda   # GPU → transformers_cuda.csv
    python benchmarks/bench_transformers.py --quick         # tiny shapes, a smoke test
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import torch

from _harness import DOCS, PeakMemory, about, emit, percentiles, run_isolated, synchronize
from bench_measures import add_csv_option, log, results_path, write_csv

PROVIDERS = ("transformers", "crossent")
RTOL = {"float32": 1e-4, "bfloat16": 2e-2}
SHAPES = {  # batch, sequence, hidden, vocabulary, intermediate, heads, key-value heads
    "quick": (2, 64, 64, 2000, 128, 4, 4),
    "cpu": (4, 512, 256, 32000, 688, 4, 4),
    "cuda": (4, 2048, 4096, 128256, 14336, 32, 8),
}


def build(shape: tuple[int, ...], device: str, dtype: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """The model (2 decoder layers, seed 0) and its inputs."""
    from transformers import LlamaConfig, LlamaForCausalLM

    batch, sequence, hidden, vocab, intermediate, heads, kv_heads = shape
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=intermediate,
        num_hidden_layers=2, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=sequence, use_cache=False,
        bos_token_id=None, eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(device, getattr(torch, dtype)).train()
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (batch, sequence), generator=generator).to(device)
    return model, {"input_ids": ids, "labels": ids}


def measure(provider: str, shape: tuple[int, ...], device: str, dtype: str, repeat: int) -> dict:
    """Time one provider's training steps, in this process."""
    model, inputs = build(shape, device, dtype)
    if provider == "crossent":
        from crossent.integrations.transformers import patch

        patch(model)

    def step() -> torch.Tensor:
        model.zero_grad(set_to_none=True)
        loss = model(**inputs).loss
        loss.backward()
        return loss.detach()

    for _ in range(2):
        step()
    times = []
    with PeakMemory(device) as memory:
        for _ in range(repeat):
            synchronize(device)
            start = time.perf_counter()
            loss = step()
            synchronize(device)
            times.append(time.perf_counter() - start)
    head = model.get_output_embeddings().weight.grad
    return {
        "times": times,
        "extra_bytes": memory.extra_bytes,
        "loss": float(loss),
        "head_grad_norm": float(head.float().norm()),
    }


def summary_rows(args: argparse.Namespace, measured: dict[str, dict]) -> list[dict]:
    """One line per provider: time, tokens per second, memory, what the patch saved."""
    batch, sequence, hidden, vocab = args.shape[:4]
    logits_bytes = batch * sequence * vocab * 4  # the float32 logits
    base = measured.get("transformers")
    rows = []
    for provider, result in measured.items():
        median, low, high = percentiles(result["times"])
        saved = "" if base is None else base["extra_bytes"] - result["extra_bytes"]
        rows.append({
            "provider": provider, "device": args.device, "dtype": args.dtype,
            "batch": batch, "sequence": sequence, "hidden": hidden, "vocab": vocab,
            "median_ms": round(1e3 * median, 1), "p20_ms": round(1e3 * low, 1),
            "p80_ms": round(1e3 * high, 1),
            "tokens_per_s": round(batch * sequence / median),
            "speedup_vs_transformers": "" if base is None
            else round(statistics.median(base["times"]) / median, 3),
            "extra_mb": round(result["extra_bytes"] / 1e6, 1),
            "saved_mb": "" if saved == "" else round(saved / 1e6, 1),
            "logits_fp32_mb": round(logits_bytes / 1e6, 1),
            "target_met": "" if saved == "" or provider == "transformers"
            else str(saved >= 2 * logits_bytes and median <= statistics.median(base["times"])),
            "loss": round(result["loss"], 6),
            "answer_ok": answer_ok(args.dtype, result, base),
            "other_load": result["other_load"],
        })  # fmt: skip
    return rows


def answer_ok(dtype: str, mine: dict, base: dict | None) -> str:
    if base is None:
        return ""
    pairs = ((mine["loss"], base["loss"]), (mine["head_grad_norm"], base["head_grad_norm"]))
    return str(all(math.isclose(a, b, rel_tol=RTOL[dtype]) for a, b in pairs))


def markdown(rows: list[dict]) -> str:
    lines = [
        "| provider | B × T, D, V | median ms (p20–p80) | tokens/s | vs transformers "
        "| extra MB | saved MB (fp32 logits MB) | answer |",
        "|" + "---|" * 8,
    ]
    for r in rows:
        lines.append(
            f"| {r['provider']} | {r['batch']} × {r['sequence']:,}, {r['hidden']:,}, "
            f"{r['vocab']:,} | {r['median_ms']} ({r['p20_ms']}–{r['p80_ms']}) "
            f"| {r['tokens_per_s']:,} | {r['speedup_vs_transformers']}× | {r['extra_mb']} "
            f"| {r['saved_mb']} ({r['logits_fp32_mb']}) | {r['answer_ok']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 on the CPU, bfloat16 on CUDA")
    parser.add_argument("--repeat", type=int, default=None, help="timed steps: 5 CPU, 10 GPU")
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a smoke test")
    add_csv_option(parser, DOCS / "transformers_<device>.csv")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    args.repeat = args.repeat or (3 if args.quick else 5 if args.device == "cpu" else 10)
    args.shape = SHAPES["quick" if args.quick else args.device]
    if args.one:
        emit(measure(args.one, args.shape, args.device, args.dtype, args.repeat))
        return
    options = ["--device", args.device, "--dtype", args.dtype, "--repeat", str(args.repeat)]
    options += ["--quick"] if args.quick else []
    measured = {}
    for provider in PROVIDERS:
        log(f"{provider}: {args.repeat} steps at batch × sequence, hidden, vocab {args.shape[:4]}")
        outcome = run_isolated(__file__, provider, options)
        if outcome is not None:
            measured[provider] = outcome
    rows = summary_rows(args, measured)
    csv_path = results_path(args, DOCS / f"transformers_{args.device}.csv")
    if csv_path is not None and rows:
        write_csv(csv_path, rows, {**about(args.device), "transformers": _version()})
    print(markdown(rows))


def _version() -> str:
    import transformers

    return str(transformers.__version__)


if __name__ == "__main__":
    main()
