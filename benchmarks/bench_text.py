"""Benchmark `crossent text`: a byte model trained on the CPU against gzip, bzip2, xz and zstd.

Corpus (nothing downloaded)
    The .py files of the CPython standard library this Python ships
    (``sysconfig.get_paths()["stdlib"]``), without site-packages and without the test suites
    (any folder named test, tests or idle_test), sorted by their path relative to the library.
    Of every 10 files, the 10th (the 10th, 20th, ...) is held out for the test, the 5th (5th,
    15th, ...) is the validation text, the rest is trained on; each set is its files joined
    in that order. The test text is never seen before step 2.

What is measured (each step runs the real command in a subprocess, with a fixed thread count)
    1. `crossent text train train.txt --held-out-file validation.txt --minutes M`: validation
       bits per byte every --eval-seconds (the float network on all of the validation text),
       for the plot of bits per byte against training minutes; the model kept is the one of
       the evaluation with the fewest validation bits (`--keep best`).
    2. `crossent text score held-out.txt`: the trained (integer) model's bits per byte on the
       test text, and gzip -9, bzip2 -9, xz -9 and zstd -19 on the same bytes.
    3. `crossent text compress` and `decompress` of the held-out text: wall time (the whole
       command, start-up and model loading included) and bytes per second; the round trip is
       checked byte for byte.

    4. With --transformers: `crossent text score` of the first --transformers-bytes of the
       held-out text under a GPT-2 of the size of GPT-2 small (124M parameters, 12 layers,
       768 wide, 1024 positions) with random weights and a byte-level BPE tokenizer of 8,192
       tokens trained here on the training text: tokens per second of scoring (context 1024,
       stride 512: each token is read twice). The weights do not change the speed; its bits
       mean nothing.

Usage:
    python benchmarks/bench_text.py --minutes 15 --threads 1     # the run in docs/benchmarks.md
    python benchmarks/bench_text.py --minutes 0.5 --quick         # a smoke test in a minute
    python benchmarks/bench_text.py --transformers-only --threads 2   # step 4 alone
Writes docs/benchmarks/text.csv, text_history.csv and text_bits_per_byte.png (not with --quick),
and text_transformers.csv with --transformers-only.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import torch

import crossent
from bench_measures import cpu_model, git_commit, log

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"
CROSSENT = [sys.executable, "-m", "crossent"]
SUITES = {"test", "tests", "idle_test"}


def corpus_files() -> list[Path]:
    """The standard library's .py files, test suites left out, sorted by relative path."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root).parts
        if "site-packages" in parts or SUITES & set(parts[:-1]):
            continue
        found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def write_corpus(work: Path, quick: bool) -> tuple[Path, Path, Path, int]:
    """train.txt, validation.txt and held-out.txt (the test text) in ``work``."""
    files = corpus_files()
    if quick:
        files = files[:60]
    sets = {"train": [], "validation": [], "held-out": []}
    for index, path in enumerate(files):
        name = {9: "held-out", 4: "validation"}.get(index % 10, "train")
        sets[name].append(path)
    for name, paths in sets.items():
        (work / f"{name}.txt").write_bytes(b"".join(p.read_bytes() for p in paths))
        (work / f"{name}-files.txt").write_text("\n".join(str(p) for p in paths) + "\n")
    return work / "train.txt", work / "validation.txt", work / "held-out.txt", len(files)


def crossent_command(arguments: list[str], threads: int) -> float:
    """Run `crossent ARGS` with ``threads`` threads; its wall time in seconds."""
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    environment["OPENBLAS_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    done = subprocess.run([*CROSSENT, *arguments], env=environment, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"crossent {' '.join(arguments)} failed:\n{done.stderr}")
    log(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "")
    return seconds


def card_seconds(model: Path) -> float:
    """The training time recorded in a finished model's card."""
    card = json.loads((model / "crossent-text-model.json").read_text())
    return float(card["training"]["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--eval-seconds", type=float, default=60.0)
    parser.add_argument("--work", type=Path, default=Path("/tmp/crossent-bench-text"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--transformers-only", action="store_true")
    parser.add_argument("--transformers-bytes", type=int, default=100_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--keep-model", action="store_true",
        help="measure the model already trained in --work/model instead of training one",
    )  # fmt: skip
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    train, validation, held, count = write_corpus(args.work, args.quick)
    if args.transformers_only:
        transformers_speed(train, held, args)
        return
    log(f"corpus: {count} files; train {train.stat().st_size:,} bytes, validation "
        f"{validation.stat().st_size:,}, test {held.stat().st_size:,}")  # fmt: skip
    model = args.work / "model"
    threads = ["--threads", str(args.threads)]
    train_seconds = card_seconds(model) if args.keep_model else crossent_command(
        ["text", "train", str(train), "--held-out-file", str(validation), "--out", str(model),
         "--minutes", str(args.minutes), "--eval-seconds", str(args.eval_seconds),
         "--eval-bytes", str(validation.stat().st_size), "--force", *threads],
        args.threads,
    )  # fmt: skip
    scored = args.work / "score.json"
    score_seconds = crossent_command(
        ["text", "score", str(held), "--model", str(model), "--json", str(scored), "--force"],
        args.threads,
    )
    packed, back = args.work / "held-out.xent", args.work / "held-out.back"
    compress_seconds = crossent_command(
        ["text", "compress", str(held), "--model", str(model), "-o", str(packed), "--force"],
        args.threads,
    )
    decompress_seconds = crossent_command(
        ["text", "decompress", str(packed), "--model", str(model), "-o", str(back), "--force"],
        args.threads,
    )
    if back.read_bytes() != held.read_bytes():
        raise SystemExit("the round trip did not give the held-out text back")
    figures = json.loads(scored.read_text())
    card = json.loads((model / "crossent-text-model.json").read_text())
    history = json.loads((model / "history.json").read_text())
    row = result_row(figures, card, packed, (train_seconds, score_seconds, compress_seconds,
                                             decompress_seconds), args)  # fmt: skip
    print(json.dumps(row, indent=2))
    if not args.quick:
        write(row, history, validation.read_bytes())


def transformers_speed(train: Path, held: Path, args: argparse.Namespace) -> None:
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = args.work / "gpt2-small-random"
    if not (folder / "config.json").exists():
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=8192,
            special_tokens=["<|endoftext|>"],
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
        tokenizer.train_from_iterator([train.read_text()], trainer)
        fast = transformers.PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, bos_token="<|endoftext|>", eos_token="<|endoftext|>"
        )
        fast.save_pretrained(folder)
        config = transformers.GPT2Config(vocab_size=len(fast), bos_token_id=fast.bos_token_id,
                                         eos_token_id=fast.eos_token_id)  # fmt: skip
        torch.manual_seed(0)
        transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    sample = args.work / "held-out-sample.txt"
    data = held.read_bytes()[: args.transformers_bytes]
    sample.write_bytes(data[: len(data.decode(errors="ignore").encode())])
    scored = args.work / "gpt2-score.json"
    seconds = crossent_command(
        ["text", "score", str(sample), "--model", str(folder), "--device", args.device,
         "--json", str(scored), "--force", "--no-compressors"],
        args.threads,
    )  # fmt: skip
    figures = json.loads(scored.read_text())
    row = {
        "model": "GPT-2 small config (124M), random weights, BPE 8192",
        "device": args.device,
        "bytes": figures["bytes"],
        "tokens": figures["tokens"],
        "context": figures["context"],
        "stride": figures["stride"],
        "command_seconds": round(seconds, 1),
        "tokens_per_s": round(figures["tokens"] / seconds),
        "threads": args.threads,
        "cpu": cpu_model(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(row, indent=2))
    with (DOCS / "text_transformers.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)


def result_row(
    figures: dict, card: dict, packed: Path, seconds: tuple[float, ...], args: argparse.Namespace
) -> dict:
    size = figures["bytes"]
    _, score_s, compress_s, decompress_s = seconds
    row = {
        "held_out_bytes": size,
        "train_bytes": card["training"]["train_bytes"],
        "training_minutes": round(card["training"]["seconds"] / 60, 2),
        "training_steps": card["training"]["steps"],
        "kept_step": card["training"]["kept"]["step"],
        "kept_minutes": round(card["training"]["kept"]["seconds"] / 60, 2),
        "kept_validation_bits_per_byte": round(
            card["training"]["kept"]["held_out_bits_per_byte"], 4
        ),
        "model_bits_per_byte": round(figures["bits_per_byte"], 4),
        **{
            f"{name.split()[0]}_bits_per_byte": round(found["bits_per_byte"], 4)
            for name, found in figures["compressors"].items()
            if found["bits_per_byte"] is not None
        },
        "compressed_file_bits_per_byte": round(8 * packed.stat().st_size / size, 4),
        "score_seconds": round(score_s, 1),
        "compress_seconds": round(compress_s, 1),
        "decompress_seconds": round(decompress_s, 1),
        "compress_bytes_per_s": round(size / compress_s),
        "decompress_bytes_per_s": round(size / decompress_s),
        "model_file_bytes": sum(p.stat().st_size for p in (args.work / "model").iterdir()),
        "threads": args.threads,
        "cpu": cpu_model(),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "crossent": crossent.__version__,
        "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%d"),
    }
    return row


def write(row: dict, history: list[dict], validation: bytes) -> None:
    with (DOCS / "text.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)
    with (DOCS / "text_history.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)
    plot(history, validation, DOCS / "text_bits_per_byte.png")


def plot(history: list[dict], validation: bytes, path: Path) -> None:
    """Validation bits per byte against training minutes, with the compressors' on the same
    validation bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    from crossent.text.yardsticks import yardsticks

    points = [h for h in history if h.get("held_out_bits_per_byte") is not None][1:]
    axes.plot(
        [h["seconds"] / 60 for h in points],
        [h["held_out_bits_per_byte"] for h in points],
        marker="o",
        label="crossent byte model",
    )
    for found in yardsticks(validation):
        bits = found.bits_per_byte(len(validation))
        if bits is not None:
            axes.axhline(bits, linestyle="--", linewidth=1, color="grey")
            axes.text(0.99, bits, found.name, transform=axes.get_yaxis_transform(),
                      fontsize=8, ha="right", va="bottom")  # fmt: skip
    axes.set_xlabel("training minutes (CPU, 1 thread)")
    axes.set_ylabel("bits per byte")
    axes.set_title("Validation text: CPython standard library source not trained on")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def replot(work: Path) -> None:
    """Draw the figure again from a finished run's files in ``work``."""
    history = json.loads((work / "model" / "history.json").read_text())
    plot(history, (work / "validation.txt").read_bytes(), DOCS / "text_bits_per_byte.png")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--replot"]:
        replot(Path(sys.argv[2]))
    else:
        main()
