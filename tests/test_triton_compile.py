"""Every Triton kernel, compiled for real GPUs without one: sm_80 (A100) and sm_90a (H100).

The interpreter that runs the kernels' other tests executes Python, so it misses what only a
GPU compiler sees: a constant that Triton specialises (an argument equal to 1 becomes a
compile-time constant: C = 1 once failed to compile), an operation the backend lacks, and
registers spilled to local memory, which costs a GPU kernel its speed. Each configuration the
launch code can pick (:func:`crossent.torch._triton.cross_entropy.plan`,
:func:`crossent.torch._triton.linear_cross_entropy.tiles`) is compiled here with Triton's
bundled ptxas, and the cubin's resource use read with its bundled cuobjdump.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

triton = pytest.importorskip("triton")

from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from crossent.torch._spec import LossOptions  # noqa: E402
from crossent.torch._triton import cross_entropy as rows_kernels  # noqa: E402
from crossent.torch._triton import linear_cross_entropy as tile_kernels  # noqa: E402

TARGETS = {"sm_80": GPUTarget("cuda", 80, 32), "sm_90a": GPUTarget("cuda", 90, 32)}
SPILL_BYTES = 0  # stack and local memory per thread: none
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
TYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int64: "i64"}
pytestmark = pytest.mark.skipif(
    not (BIN / "ptxas").exists() or not (BIN / "cuobjdump").exists(),
    reason="this Triton ships no ptxas/cuobjdump (not the NVIDIA backend)",
)


def compile_for(target: str, kernel, values: dict[str, object], num_warps: int, stages: int):
    """The kernel compiled for ``target`` with these argument values, specialised as Triton's
    launcher specialises them: tensors by their dtype, an integer equal to 1 as a constant
    (unless the kernel says ``do_not_specialize``), None as a constant; then its (registers,
    spilled bytes per thread) from the cubin."""
    function = kernel if hasattr(kernel, "params") else kernel.fn  # under @triton.heuristics
    signature: dict[str, str] = {}
    constants: dict[str, object] = {}
    for param in function.params:
        value = values[param.name]
        if param.is_constexpr or value is None:
            signature[param.name], constants[param.name] = "constexpr", value
        elif isinstance(value, torch.dtype):
            signature[param.name] = "*" + TYPES[value]
        elif isinstance(value, bool):
            signature[param.name] = "i1"
        elif isinstance(value, int):
            if value == 1 and not param.do_not_specialize:
                signature[param.name], constants[param.name] = "constexpr", 1
            else:
                signature[param.name] = "i32" if -(2**31) <= value < 2**31 else "i64"
        else:
            signature[param.name] = "fp32"
    source = ASTSource(fn=function, signature=signature, constexprs=constants)
    options = {"num_warps": num_warps, "num_stages": stages}
    compiled = triton.compile(source, target=TARGETS[target], options=options)
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        usage = subprocess.run(
            [str(BIN / "cuobjdump"), "--dump-resource-usage", str(cubin)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    found = re.search(r"REG:(\d+) STACK:(\d+) SHARED:\d+ LOCAL:(\d+)", usage)
    assert found, usage
    registers, stack, local = map(int, found.groups())
    return registers, stack + local


# ---- the cross-entropy rows: every mode, dtype and switch the launch code sets ----

MODES = {  # (gradient, known log-sum-exp)
    "forward": (False, False),  # the logits-given loss's forward on CUDA
    "forward+gradient": (True, False),  # the linear head's chunks
    "backward": (True, True),  # the logits-given loss's backward
}
ALL_OPTIONS = LossOptions(label_smoothing=0.1, z_loss=1e-4, softcap=30.0)


def _rows_cases() -> list[tuple[str, int, torch.dtype, str, str, bool]]:
    """(target, classes, dtype, mode, options, probability targets)."""
    cases = []
    for target, dtype, mode, options, probability in itertools.product(
        TARGETS, TYPES, MODES, ("none", "all"), (False, True)
    ):
        if dtype == torch.int64 or (target == "sm_80" and options == "none"):
            continue
        cases.append((target, 128_256, dtype, mode, options, probability))
    for target, classes, probability in itertools.product(TARGETS, (1, 1000), (False, True)):
        cases.append((target, classes, torch.float32, "forward+gradient", "all", probability))
    return cases


def _compile_rows(target, classes, dtype, mode, options, probability) -> tuple[int, int]:
    gradient, known = MODES[mode]
    chosen = ALL_OPTIONS if options == "all" else LossOptions()
    weighted = options == "all"
    launch = rows_kernels.plan(classes, dtype, chosen, probability, weighted, gradient, known)
    constants = dict(launch.constants)
    pointers = {
        "X": dtype,
        "W": torch.float32 if weighted else None,
        "G": dtype if gradient else None,
        "F": torch.float32,
        "LOSS": torch.float32,
        "LSE": torch.float32,
    }
    numbers = {"stride_x": classes, "stride_g": classes, "stride_f": 0, "C": classes}
    numbers |= {"eps": 0.1, "z_loss": 1e-4, "softcap": 30.0}
    if probability:
        kernel = rows_kernels._cross_entropy_probability_rows
        values = {**pointers, **numbers, "T": torch.float32, "stride_t": classes}
    else:
        kernel = rows_kernels._cross_entropy_rows
        values = {**pointers, **numbers, "Y": torch.int64, "ignore_index": -100}
        values["TOTAL_W"] = torch.float32 if weighted else None
    return compile_for(target, kernel, values | constants, launch.num_warps, 3)


# ---- the linear head's tiles ----


def _tile_cases() -> list[tuple[str, str, torch.dtype, bool]]:
    cases = []
    for target, which in itertools.product(TARGETS, ("forward", "backward")):
        cases += [(target, which, dtype, False) for dtype in (torch.bfloat16, torch.float16)]
        cases += [(target, which, torch.float32, tf32) for tf32 in (False, True)]
    return cases


def _compile_tiles(target, which, dtype, tf32) -> tuple[int, int]:
    tiles = tile_kernels.tiles(dtype, True, tf32)
    values: dict[str, object] = {
        "H": dtype, "Wt": dtype, "B": dtype, "Y": torch.int64, "N": 16384, "C": 128_256,
        "D": 4096, "softcap": 30.0, "first_row_block": 0, "HAS_BIAS": True, "SOFTCAP": True,
        "SMOOTHING": True, **tiles.constants(),
    }  # fmt: skip
    if which == "forward":
        kernel = tile_kernels._forward
        values |= {"PARTS": torch.float32, "blocks_per_split": 8}
    else:
        kernel = tile_kernels._backward
        values |= {
            "LSE": torch.float32, "F": torch.float32, "stride_f": 0, "DH": torch.float32,
            "DW": torch.float32, "DB": torch.float32, "ignore_index": -100, "eps": 0.1,
            "z_loss": 1e-4, "first_class_block": 0, "Z_LOSS": True, "WANT_H": True,
            "WANT_W": True, "WANT_B": True,
        }  # fmt: skip
    return compile_for(target, kernel, values, tiles.num_warps, tiles.num_stages)


def _name(case: tuple[object, ...]) -> str:
    return "-".join(str(value).replace("torch.", "") for value in case)


CASES: dict[str, tuple[Callable[..., tuple[int, int]], tuple[object, ...]]] = {
    **{_name(case): (_compile_rows, case) for case in _rows_cases()},
    **{_name(case): (_compile_tiles, case) for case in _tile_cases()},
}


def _compile_one_class() -> tuple[int, int]:
    """C = 1 compiles (the kernel keeps C a runtime value) while the strides equal to 1
    become constants, as on a GPU."""
    launch = rows_kernels.plan(1, torch.float32, LossOptions(), False, False, True, False)
    values = {
        "X": torch.float32, "stride_x": 1, "Y": torch.int64, "W": None, "G": torch.float32,
        "stride_g": 1, "F": torch.float32, "stride_f": 0, "LOSS": torch.float32,
        "LSE": torch.float32, "TOTAL_W": None, "C": 1, "ignore_index": -100, "eps": 0.0,
        "z_loss": 0.0, "softcap": 1.0, **dict(launch.constants),
    }  # fmt: skip
    return compile_for("sm_90a", rows_kernels._cross_entropy_rows, values, 4, 3)


CASES["one class, strides specialised to 1"] = (_compile_one_class, ())


@pytest.fixture(scope="module")
def compiled() -> dict[str, object]:
    """Every case compiled in one subprocess: the kernels here run in Triton's interpreter
    (TRITON_INTERPRET=1), which compiles nothing, so the compiler needs a process without it.
    Each case's (registers, spilled bytes), or its compile error as text."""
    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run(
        [sys.executable, __file__], capture_output=True, text=True, env=environment, timeout=1200
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return results


@pytest.mark.parametrize("case", list(CASES))
def test_every_configuration_compiles_for_sm80_and_sm90a_without_spills(compiled, case) -> None:
    result = compiled[case]
    assert isinstance(result, list), f"does not compile: {result}"
    registers, spilled = result
    assert spilled <= SPILL_BYTES, f"{spilled} bytes spilled a thread ({registers} registers)"


def _compile_all() -> dict[str, object]:
    results: dict[str, object] = {}
    for name, (compile_case, arguments) in CASES.items():
        try:
            results[name] = list(compile_case(*arguments))
        except Exception as error:  # reported by the case's test, with its message
            results[name] = f"{type(error).__name__}: {error}"[:2000]
    return results


if __name__ == "__main__":
    print(json.dumps(_compile_all()))
