"""The optional compiled CPU kernel; everything else is configured in pyproject.toml.

Where no C compiler is found the build skips it (``optional=True``) and crossent runs the
same loss with torch ops instead (:mod:`crossent.torch._torch_ops`), warning once that it is
slower. A release build sets ``CROSSENT_REQUIRE_KERNEL=1`` so that a wheel never lacks it.

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

setup(
    ext_modules=[
        Extension(
            "crossent.torch._native",
            ["src/crossent/torch/_native.c"],
            extra_compile_args=FLAGS,
            define_macros=[("Py_LIMITED_API", LIMITED_API)],
            py_limited_api=True,
            optional=os.environ.get("CROSSENT_REQUIRE_KERNEL", "") != "1",
        )
    ],
    options={"bdist_wheel": {"py_limited_api": "cp310"}},
)
