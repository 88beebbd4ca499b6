"""The optional compiled CPU kernel; everything else is configured in pyproject.toml.

Where no C compiler is found the build skips it (``optional=True``) and crossent runs the
same loss with torch ops instead (:mod:`crossent.torch._cpu`).
"""

from setuptools import Extension, setup

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
            optional=True,
        )
    ]
)
