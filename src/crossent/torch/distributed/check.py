"""Check a multi-process set-up: the vocabulary-parallel losses against one process's.

Run it the way the training will run, e.g. on one machine with two processes::

    torchrun --standalone --nproc-per-node 2 -m crossent.torch.distributed.check

or on two machines with eight GPUs each (the same command on both, with ``--node-rank`` 0
and 1)::

    torchrun --nnodes 2 --nproc-per-node 8 --node-rank 0 \\
        --rdzv-backend c10d --rdzv-endpoint HOST:29500 -m crossent.torch.distributed.check

Every rank makes the same random logits and linear head from a seed, takes its contiguous
slice of the classes, and computes the loss and gradients both split over the ranks and whole;
rank 0 prints the largest differences and the bytes each rank sent per row, and the exit status
is 0 when the two agree within float32 tolerance, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist

from crossent.torch import cross_entropy, linear_cross_entropy
from crossent.torch.distributed.vocab_parallel import (
    vocab_parallel_cross_entropy,
    vocab_parallel_linear_cross_entropy,
)

TOLERANCE = 1e-4  # relative, float32


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    device = _device(args.device)
    backend = args.backend or ("nccl" if device.type == "cuda" else "gloo")
    dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        worst, sent = _compare(args, device, rank, world)
        if rank == 0:
            print(
                f"{world} ranks ({backend}, {device.type}), N = {args.rows}, C = {args.classes}: "
                f"largest relative difference from one process {worst:.2e}; "
                f"{sent:g} bytes sent into all-reduces per row by each rank"
            )
            print("OK" if worst <= TOLERANCE else f"FAILED: above the tolerance {TOLERANCE:g}")
        # every rank is done with its collectives before any tears its group down: a rank
        # whose peer had already exited could abort in gloo's teardown
        dist.barrier()
        return 0 if worst <= TOLERANCE else 1
    finally:
        dist.destroy_process_group()


def _compare(
    args: argparse.Namespace, device: torch.device, rank: int, world: int
) -> tuple[float, float]:
    """The largest relative difference over the losses and gradients, and bytes per row."""
    generator = torch.Generator().manual_seed(args.seed)
    logits = torch.randn(args.rows, args.classes, generator=generator) * 3
    labels = torch.randint(0, args.classes, (args.rows,), generator=generator)
    hidden = torch.randn(args.rows, 32, generator=generator)
    weight = torch.randn(args.classes, 32, generator=generator) / 4
    bounds = torch.linspace(0, args.classes, world + 1).round().long().tolist()
    mine = slice(bounds[rank], bounds[rank + 1])
    logits, labels = logits.to(device), labels.to(device)
    hidden, weight = hidden.to(device), weight.to(device)
    options: dict[str, Any] = {"label_smoothing": 0.1, "z_loss": 1e-4}

    whole = _value_and_grads(lambda x: cross_entropy(x, labels, **options), logits)
    with _counting_bytes() as sent:
        split = _value_and_grads(
            lambda x: vocab_parallel_cross_entropy(x, labels, **options), logits[:, mine]
        )
    bytes_per_row = sum(sent) / args.rows
    worst = _difference(split, whole, mine, dim=1)
    whole = _value_and_grads(
        lambda h, w: linear_cross_entropy(h, w, labels, chunk_size=64, **options), hidden, weight
    )
    split = _value_and_grads(
        lambda h, w: vocab_parallel_linear_cross_entropy(h, w, labels, chunk_size=64, **options),
        hidden,
        weight[mine],
    )
    worst = max(worst, _difference(split, whole, mine, dim=0))
    top = torch.tensor([worst], device=device)
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    return float(top), bytes_per_row


def _value_and_grads(loss_of: Any, *tensors: torch.Tensor) -> list[torch.Tensor]:
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    loss = loss_of(*leaves)
    return [loss.detach(), *torch.autograd.grad(loss, leaves)]


def _difference(
    split: list[torch.Tensor], whole: list[torch.Tensor], mine: slice, dim: int
) -> float:
    """Relative differences: the loss, then this rank's slice of the sliced gradient (the
    last), and any gradient in between (∂hidden), which every rank has whole."""
    pairs = [
        (split[0], whole[0]),
        (split[-1], whole[-1].narrow(dim, mine.start, mine.stop - mine.start)),
    ]
    pairs += list(zip(split[1:-1], whole[1:-1], strict=True))
    differences = [(a - b).abs().max() / b.abs().max().clamp_min(1e-30) for a, b in pairs]
    return float(torch.stack(differences).max())  # NaN if any is: torch's max keeps it


@contextlib.contextmanager
def _counting_bytes() -> Iterator[list[int]]:
    """The bytes of each tensor passed to ``dist.all_reduce`` on this rank meanwhile."""
    counted: list[int] = []
    all_reduce = dist.all_reduce

    def counting(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        counted.append(tensor.numel() * tensor.element_size())
        return all_reduce(tensor, *args, **kwargs)

    dist.all_reduce = counting
    try:
        yield counted
    finally:
        dist.all_reduce = all_reduce


def _device(name: str | None) -> torch.device:
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        index = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device(name)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m crossent.torch.distributed.check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--rows", type=int, default=256)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    parser.add_argument("--backend", help="default: nccl on cuda, gloo on cpu")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(main())
