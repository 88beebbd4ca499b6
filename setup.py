"""The optional compiled CPU kernels; everything else is configured in pyproject.toml.

- ``crossent.torch._native``: the cross-entropy loss's pass over float32 rows;
- ``crossent.coding._quantise``: predicted weights quantised to the range coder's frequencies.

Where no C compiler is found the build skips them (``optional=True``) and crossent computes the
same numbers with torch ops (:mod:`crossent.torch._torch_ops`, warning once that it is slower)
and NumPy. A release build sets ``CROSSENT_REQUIRE_KERNEL=1`` so that a wheel never lacks them.

The kernel calls only CPython's limited API (the stable ABI of Python 3.10), so one wheel per
platform, tagged ``cp310-abi3``, serves every Python from 3.10 on.
"""

import os

from setuptools import Extension, setup

LIMITED_API = "0x030A0000"  # Python 3.10's stable ABI: Python.h declares nothing outside it
FLAGS = [
    "-O3",
    "-std=c11",
    "-fopenmp-simd",  # the `#pragma omp simd` loops only, no OpenMP runtime
    "-fno-math-errno",  # log() of a row sum sets no errno
    "-ffp-contract=fast",  # a * b + c as one fused multiply-add where the CPU has them
    "-fno-trapping-math",
    "-Wall",
    "-Wextra",
]


def kernel(name: str, source: str) -> Extension:
    """One optional compiled module, built against the limited API."""
    return Extension(
        name,
        [source],
        extra_compile_args=FLAGS,
        define_macros=[("Py_LIMITED_API", LIMITED_API)],
        py_limited_api=True,
        optional=os.environ.get("CROSSENT_REQUIRE_KERNEL", "") != "1",
    )


setup(
    ext_modules=[
        kernel("crossent.torch._native", "src/crossent/torch/_native.c"),
        kernel("crossent.coding._quantise", "src/crossent/coding/_quantise.c"),
    ],
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
