"""Benchmark crossent.torch.linear_cross_entropy against the unfused head and other fused ones.

What is measured
    Forward + backward of a classifier head's mean cross entropy over index targets:
    loss = f(hidden, weight, target); loss.backward(), with gradients for hidden (N × D) and
    weight (C × D), no bias. hidden, weight and target exist before the clock starts; every
    call gets fresh leaf tensors, so the gradients are allocated by the call, as in training.
    Each provider runs in its own process (benchmarks/_harness.py), is warmed up twice
    (torch.compile compiles there), then timed --repeat times: the median and the 20th / 80th
    percentiles are reported, and speed-up = eager median / provider median (> 1: faster).

Providers
    crossent          crossent.torch.linear_cross_entropy(hidden, weight, target)
    crossent-lowmem   the same with low_memory=True, on CUDA, where the signature has it
    eager             F.cross_entropy(F.linear(hidden, weight), target), the unfused head
    compile           torch.compile of that function (dynamic=False: one static graph a shape)
    torch-lce         torch.nn.functional.linear_cross_entropy with
                      options=torch.nn.LinearCrossEntropyOptions() (its chunked path); the
                      reference path (no options) where that class is absent
    liger             Liger-Kernel's fused linear cross entropy (CUDA, if importable)
    cce               Cut Cross-Entropy, cut_cross_entropy.linear_cross_entropy (CUDA, if
                      importable)
    matmul            not a loss: the three plain matmuls of the unfused head into buffers
                      allocated beforehand, logits = h Wᵀ, dH = G W and dW = Gᵀ h, for
                      6 · N · D · C flops. Its time is the yardstick: a provider's TFLOP/s
                      counts the same 6 · N · D · C flops, and "of matmul" = matmul time /
                      provider time.

Cases
    CPU (default), float32:
        synthetic       N = 4096, D = 1024, C = 32000: hidden ~ N(0, 1), weight ~ N(0, 1/D),
                        so the logits are ~ N(0, 1) and the softmax is flat.
        clusters        N = 4096, D = 512, C = 4000: the hidden states and head of a small
                        model trained here, so its softmax is peaked (the real-data check).
                        Data: C Gaussian clusters in 64 dimensions (centres ~ N(0, 1), noise
                        0.3); model: gelu(x Aᵀ) (D units), then the head W; 200 SGD steps of
                        512 examples (momentum 0.9), plain torch. Timed on 4096 new examples
                        with their true classes.
        random          N = 4096, D = 512, C = 4000 like "synthetic": the same shape as
                        "clusters" with a flat softmax, for comparison.
    GPU (--device cuda), bfloat16: synthetic at D = 4096, C = 128256, N = 16384 and N = 4096;
        clusters and random at N = 16384, D = 4096, C = 32000 (trained in float32 on the GPU,
        300 steps of 4096 examples).
    --quick: clusters and random only, at N = 256, D = 64, C = 200 (100 steps of 256).
    Each case reports the mean of the largest softmax probability of its rows ("max p").

Memory
    "extra" is the provider's peak memory during the timed calls (CPU: resident set size;
    CUDA: torch.cuda.max_memory_allocated) above what its process held between calls with
    the inputs and weight, minus the two gradients (N · D + C · D elements of the input
    dtype). It is reported in MB (10⁶ bytes) and as a share of the N × C float32 logits
    (N · C · 4 bytes). The issue's CPU target: at most 10% (52 MB at 4096 × 32000).

The answer is checked
    Every provider's loss and the norms of its two gradients, from its last call, are compared
    with eager's (relative 1e-3 in float32, 3e-2 in bfloat16); a mismatch is logged and
    written as answer_ok = False.

Usage:
    python benchmarks/bench_linear_cross_entropy.py                # CPU, about 6 minutes on 2 cores
    python benchmarks/bench_linear_cross_entropy.py --device cuda  # GPU → *_cuda.csv
    python benchmarks/bench_linear_cross_entropy.py --quick        # tiny shapes, a smoke test
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import math
import statistics
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from _harness import DOCS, about, emit, importable, percentiles, run_isolated, time_calls
from bench_measures import add_csv_option, log, results_path, write_csv
from crossent.torch import linear_cross_entropy

PROVIDERS = (
    "matmul",
    "crossent",
    "crossent-lowmem",
    "eager",
    "compile",
    "torch-lce",
    "liger",
    "cce",
)
RTOL = {"float32": 1e-3, "float64": 1e-6, "bfloat16": 3e-2, "float16": 3e-2}

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def cases_for(device: str, quick: bool) -> list[dict]:
    """The shapes of a run; "train" gives the model's training of the clusters cases."""
    if quick:  # one shape, so that torch.compile compiles once
        synthetic, clusters, train = [], (256, 64, 200), (100, 256)
    elif device == "cpu":
        synthetic, clusters, train = [(4096, 1024, 32000)], (4096, 512, 4000), (200, 512)
    else:
        synthetic = [(16384, 4096, 128256), (4096, 4096, 128256)]
        clusters, train = (16384, 4096, 32000), (300, 4096)
    cases = [{"name": "synthetic", "shape": shape, "data": "random"} for shape in synthetic]
    cases.append({"name": "clusters", "shape": clusters, "data": "trained", "train": train})
    cases.append({"name": "random", "shape": clusters, "data": "random"})
    return cases


def unfused(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(F.linear(hidden, weight), target)


def available(provider: str, device: str) -> str | None:
    """Why ``provider`` cannot run here, or None."""
    if provider == "crossent-lowmem":
        if "low_memory" not in inspect.signature(linear_cross_entropy).parameters:
            return "linear_cross_entropy has no low_memory keyword"
        return None if device == "cuda" else "CUDA only"
    if provider == "torch-lce" and not hasattr(F, "linear_cross_entropy"):
        return "this torch has no torch.nn.functional.linear_cross_entropy"
    if provider in ("liger", "cce"):
        module = "liger_kernel" if provider == "liger" else "cut_cross_entropy"
        if device != "cuda":
            return "CUDA only"
        if not importable(module):
            return f"{module} is not importable"
    return None


def loss_function(provider: str) -> tuple[Loss, str]:
    """The provider's loss of (hidden, weight, target), and a note on how it is called."""
    if provider == "crossent":
        return linear_cross_entropy, ""
    if provider == "crossent-lowmem":
        return functools.partial(linear_cross_entropy, low_memory=True), "low_memory=True"
    if provider == "eager":
        return unfused, "F.linear + F.cross_entropy"
    if provider == "compile":
        return torch.compile(unfused, dynamic=False), "torch.compile(dynamic=False)"
    if provider == "torch-lce":
        options = getattr(torch.nn, "LinearCrossEntropyOptions", None)
        if options is None:
            return F.linear_cross_entropy, "reference path (no LinearCrossEntropyOptions)"
        return (
            functools.partial(F.linear_cross_entropy, options=options()),
            "options=LinearCrossEntropyOptions()",
        )
    if provider == "liger":
        return _liger()
    from cut_cross_entropy import linear_cross_entropy as cce

    return cce, "cut_cross_entropy.linear_cross_entropy"


def _liger() -> tuple[Loss, str]:
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
    except ImportError:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

        module = LigerFusedLinearCrossEntropyLoss()
        return lambda h, w, y: module(w, h, y), "LigerFusedLinearCrossEntropyLoss"

    def loss(h: torch.Tensor, w: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = liger_fused_linear_cross_entropy(h, w, y)
        return out[0] if isinstance(out, tuple) else out  # some versions add the z-loss

    return loss, "liger_fused_linear_cross_entropy"


def inputs(case: dict, device: str, dtype: str) -> tuple[torch.Tensor, ...]:
    """hidden (N, D), weight (C, D) in ``dtype`` and target (N,), on ``device``."""
    rows, dim, classes = case["shape"]
    if case["data"] == "random":
        generator = torch.Generator(device=device).manual_seed(0)
        hidden = torch.randn(rows, dim, generator=generator, device=device)
        weight = torch.randn(classes, dim, generator=generator, device=device) / math.sqrt(dim)
        target = torch.randint(0, classes, (rows,), generator=generator, device=device)
    else:
        saved = torch.load(case["file"])
        hidden, weight, target = saved["hidden"], saved["weight"], saved["target"]
    wanted = getattr(torch, dtype)
    return hidden.to(device, wanted), weight.to(device, wanted), target.to(device)


def train_clusters(case: dict, device: str, path: Path) -> None:
    """Train the clusters model (see the docstring) and save its hidden states and head."""
    rows, dim, classes = case["shape"]
    steps, batch = case["train"]
    generator = torch.Generator(device=device).manual_seed(1)
    features = 64
    centres = torch.randn(classes, features, generator=generator, device=device)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.randint(0, classes, (n,), generator=generator, device=device)
        noise = torch.randn(n, features, generator=generator, device=device)
        return centres[y] + 0.3 * noise, y

    inner = torch.randn(dim, features, generator=generator, device=device) / features**0.5
    inner.requires_grad_(True)
    head = torch.zeros(classes, dim, device=device, requires_grad=True)
    optimiser = torch.optim.SGD([inner, head], lr=min(0.5, 256 / dim), momentum=0.9)
    for _ in range(steps):
        x, y = sample(batch)
        loss = unfused(F.gelu(F.linear(x, inner)), head, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    with torch.no_grad():
        x, y = sample(rows)
        hidden = F.gelu(F.linear(x, inner))
    log(f"  trained {steps} steps of {batch}: last training loss {float(loss.detach()):.4f} nats")
    torch.save({"hidden": hidden.cpu(), "weight": head.detach().cpu(), "target": y.cpu()}, path)


def mean_max_probability(hidden: torch.Tensor, weight: torch.Tensor) -> float:
    """Mean over rows of the largest softmax probability of hidden @ weight.T, in float32."""
    total, block = 0.0, max(1, (64 << 20) // (4 * weight.shape[0]))
    wide = weight.float()  # once, not per block: 2 GB at C = 128256, D = 4096
    with torch.no_grad():
        for start in range(0, hidden.shape[0], block):
            logits = hidden[start : start + block].float() @ wide.T
            total += float(torch.softmax(logits, dim=-1).amax(dim=-1).sum())
    return total / hidden.shape[0]


def measure(provider: str, device: str, dtype: str, repeat: int, cases: list[dict]) -> dict:
    """Time one provider on every case, in this process."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn, detail = (None, "") if provider == "matmul" else loss_function(provider)
        results = {}
        for case in cases:
            hidden, weight, target = inputs(case, device, dtype)
            try:
                if fn is None:
                    results[case["name"]] = measure_matmul(hidden, weight, device, repeat)
                else:
                    results[case["name"]] = measure_loss(fn, hidden, weight, target, device, repeat)
            except Exception as error:  # e.g. out of memory: the other cases still run
                log(f"  {provider} on {case['name']}: {type(error).__name__}: {error}")
                results[case["name"]] = {"error": f"{type(error).__name__}: {error}"[:300]}
            del hidden, weight, target
            if device == "cuda":
                torch.cuda.empty_cache()
    notes = sorted({str(w.message).splitlines()[0][:200] for w in caught})
    return {"detail": detail, "cases": results, "warnings": " | ".join(notes)}


def measure_loss(
    fn: Loss,
    hidden: torch.Tensor,
    weight: torch.Tensor,
    target: torch.Tensor,
    device: str,
    repeat: int,
) -> dict:
    def prepare() -> tuple[torch.Tensor, torch.Tensor]:
        return hidden.detach().requires_grad_(True), weight.detach().requires_grad_(True)

    def call(leaves: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        loss = fn(leaves[0], leaves[1], target)
        loss.backward()
        return loss.detach()

    timed = time_calls(prepare, call, device, repeat)
    (h, w), loss = timed.last
    gradients = h.grad.numel() * h.grad.element_size() + w.grad.numel() * w.grad.element_size()
    return {
        "times": timed.times,
        "extra_bytes": timed.extra_bytes - gradients,
        "loss": float(loss),
        "grad_norms": [float(h.grad.float().norm()), float(w.grad.float().norm())],
    }


def measure_matmul(hidden: torch.Tensor, weight: torch.Tensor, device: str, repeat: int) -> dict:
    """The unfused head's three matmuls, into outputs allocated once."""
    rows, classes = hidden.shape[0], weight.shape[0]
    logits = hidden.new_empty(rows, classes)
    grad = torch.randn(rows, classes, device=device).to(hidden.dtype) / classes
    d_hidden, d_weight = torch.empty_like(hidden), torch.empty_like(weight)

    def call(_: None) -> None:
        torch.mm(hidden, weight.T, out=logits)
        torch.mm(grad, weight, out=d_hidden)
        torch.mm(grad.T, hidden, out=d_weight)

    return {"times": time_calls(lambda: None, call, device, repeat).times}


def run(args: argparse.Namespace, folder: Path) -> list[dict]:
    """Prepare the cases, run every provider in its own process, and summarise."""
    cases = cases_for(args.device, args.quick)
    for case in cases:
        rows, dim, classes = case["shape"]
        log(f"case {case['name']}: N = {rows}, D = {dim}, C = {classes}")
        if case["data"] == "trained":
            case["file"] = str(folder / f"{case['name']}.pt")
            train_clusters(case, args.device, Path(case["file"]))
        hidden, weight, _ = inputs(case, args.device, args.dtype)
        case["max_p"] = mean_max_probability(hidden, weight)
        log(f"  mean largest softmax probability {case['max_p']:.4f}")
        del hidden, weight
    if args.device == "cuda":
        torch.cuda.empty_cache()
    cases_file = folder / "cases.json"
    cases_file.write_text(json.dumps(cases))
    options = ["--device", args.device, "--dtype", args.dtype, "--repeat", str(args.repeat),
               "--cases", str(cases_file)]  # fmt: skip
    measured = {}
    for provider in args.providers:
        why_not = available(provider, args.device)
        if why_not is not None:
            log(f"{provider}: skipped, {why_not}")
            continue
        log(f"{provider}: running all cases")
        outcome = run_isolated(__file__, provider, options)
        if outcome is not None:
            if outcome["warnings"]:
                log(f"  warnings: {outcome['warnings']}")
            measured[provider] = outcome
    return [
        summary_row(args, case, provider, measured)
        for case in cases
        for provider in measured
        if "times" in measured[provider]["cases"].get(case["name"], {})
    ]


def summary_row(args: argparse.Namespace, case: dict, provider: str, measured: dict) -> dict:
    """One provider's line on one case: times, speed-ups, memory, throughput, answer."""
    rows, dim, classes = case["shape"]
    results = {name: outcome["cases"].get(case["name"], {}) for name, outcome in measured.items()}
    median = {name: statistics.median(r["times"]) for name, r in results.items() if "times" in r}
    mine = results[provider]
    _, low, high = percentiles(mine["times"])
    versus = {
        f"speedup_vs_{anchor}": round(median[anchor] / median[provider], 2)
        if anchor in median else "" for anchor in ("eager", "compile")
    }  # fmt: skip
    logits_bytes = rows * classes * 4
    extra = mine.get("extra_bytes")
    flops = 6 * rows * dim * classes
    return {
        "case": case["name"], "device": args.device, "rows": rows, "dim": dim,
        "classes": classes, "dtype": args.dtype, "max_p": round(case["max_p"], 4),
        "provider": provider, "detail": measured[provider]["detail"],
        "median_ms": round(1e3 * median[provider], 3), "p20_ms": round(1e3 * low, 3),
        "p80_ms": round(1e3 * high, 3), **versus,
        "extra_memory_mb": "" if extra is None else round(extra / 1e6, 1),
        "extra_share_of_logits": "" if extra is None else round(extra / logits_bytes, 4),
        "logits_fp32_mb": round(logits_bytes / 1e6, 1),
        "tflops": round(flops / median[provider] / 1e12, 4),
        "share_of_matmul": round(median["matmul"] / median[provider], 3)
        if "matmul" in median else "",
        "loss": round(mine["loss"], 6) if "loss" in mine else "",
        "answer_ok": answer_ok(args.dtype, mine, results.get("eager", {})),
        "other_load": measured[provider]["other_load"],
        "warnings": measured[provider]["warnings"],
    }  # fmt: skip


def answer_ok(dtype: str, mine: dict, eager: dict) -> str:
    """Whether the loss and the gradient norms agree with eager's ("" where not comparable)."""
    if "loss" not in mine or "loss" not in eager:
        return ""
    ours = [mine["loss"], *mine["grad_norms"]]
    theirs = [eager["loss"], *eager["grad_norms"]]
    close = all(math.isclose(a, b, rel_tol=RTOL[dtype]) for a, b in zip(ours, theirs, strict=True))
    return str(close)


def markdown(rows: list[dict]) -> str:
    lines = ["| case | N × D × C | max p | provider | median ms (p20–p80) | vs eager "
             "| extra MB (of fp32 logits) | TFLOP/s | of matmul | answer |",
             "|" + "---|" * 10]  # fmt: skip
    for r in rows:
        extra = (
            f"{r['extra_memory_mb']} ({100 * r['extra_share_of_logits']:.1f}%)"
            if r["extra_memory_mb"] != ""
            else ""
        )
        lines.append(
            f"| {r['case']} | {r['rows']:,} × {r['dim']:,} × {r['classes']:,} | {r['max_p']} "
            f"| {r['provider']} | {r['median_ms']} ({r['p20_ms']}–{r['p80_ms']}) "
            f"| {r['speedup_vs_eager']}× | {extra} | {r['tflops']} | {r['share_of_matmul']} "
            f"| {r['answer_ok']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 on the CPU, bfloat16 on CUDA")
    parser.add_argument(
        "--repeat", type=int, default=None, help="timed calls: 5 CPU, 20 GPU, 3 quick"
    )
    parser.add_argument("--quick", action="store_true", help="tiny shapes, a smoke test")
    parser.add_argument("--providers", default=",".join(PROVIDERS), help="comma-separated")
    add_csv_option(parser, DOCS / "linear_cross_entropy_<device>.csv")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--cases", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("float32" if args.device == "cpu" else "bfloat16")
    args.repeat = args.repeat or (3 if args.quick else 5 if args.device == "cpu" else 20)
    if args.one:
        cases = json.loads(args.cases.read_text())
        emit(measure(args.one, args.device, args.dtype, args.repeat, cases))
        return
    args.providers = [p for p in args.providers.split(",") if p]
    unknown = set(args.providers) - set(PROVIDERS)
    if unknown:
        parser.error(f"unknown providers {sorted(unknown)}; choose from {PROVIDERS}")
    with tempfile.TemporaryDirectory(prefix="crossent-bench-lce-") as folder:
        rows = run(args, Path(folder))
    csv_path = results_path(args, DOCS / f"linear_cross_entropy_{args.device}.csv")
    if csv_path is not None and rows:
        write_csv(csv_path, rows, about(args.device))
    print(markdown(rows))


if __name__ == "__main__":
    main()
