#!/usr/bin/env bash
# Every GPU check of crossent in one run, for a machine with an NVIDIA GPU: the tests that
# put tensors on CUDA (the conformance suite's GPU backends, the Triton kernels' tests), the
# vocabulary-parallel check on CUDA tensors, then the GPU benchmarks of both losses.
#
#   OUT=folder bash benchmarks/device_check.sh     (from the repository root)
#
# Uses the machine's own torch and triton (PYTHONPATH=src, nothing installed). Packages it
# lacks, such as liger-kernel and cut-cross-entropy for the comparisons, are installed from
# wheels in .whl/ when that folder exists (git-ignored; both are pure-Python wheels):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform any -d .whl liger-kernel cut-cross-entropy
#
# The machine's image has pytest, hypothesis, pytest-timeout and scipy, which the tests need.
# Writes into $OUT: env.txt (GPU, driver, versions, date, commit), tests_*.txt, one log per
# benchmark and the benchmarks' CSV files; the benchmarks also write
# docs/benchmarks/*_cuda.csv. Steps run on after a failure; the exit status is that of the
# first one that failed.
set -uo pipefail
OUT=${OUT:-device-results}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
run() {  # run LOG COMMAND...: the command's output into LOG, then shown; its status kept
    local log=$1 code=0
    shift
    "$@" >"$log" 2>&1 || code=$?
    cat "$log"
    [ "$status" -ne 0 ] || status=$code
}

{
    date -u +%Y-%m-%dT%H:%MZ
    git rev-parse --short HEAD 2>/dev/null || echo "commit unknown"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} >"$OUT/env.txt" 2>&1
# the tests that put tensors on CUDA: the conformance suite's GPU backends (the public
# functions on CUDA, every case against the float64 oracle) and the Triton kernels' own tests
run "$OUT/tests_conformance.txt" python3 -m pytest -q -p no:cacheprovider \
    tests/test_conformance.py -k "CUDA or GPU"
run "$OUT/tests_triton.txt" python3 -m pytest -q -p no:cacheprovider \
    tests/test_triton_cross_entropy.py tests/test_triton_linear_cross_entropy.py
# vocabulary-parallel losses on CUDA tensors: one rank through NCCL, two ranks sharing the
# GPU through gloo (NCCL refuses two ranks on one device)
run "$OUT/distributed_nccl.txt" python3 -m torch.distributed.run --standalone \
    --nproc-per-node 1 -m crossent.torch.distributed.check --device cuda
run "$OUT/distributed_gloo.txt" python3 -m torch.distributed.run --standalone \
    --nproc-per-node 2 -m crossent.torch.distributed.check --device cuda --backend gloo
for bench in cross_entropy linear_cross_entropy; do
    run "$OUT/bench_$bench.txt" python3 "benchmarks/bench_$bench.py" --device cuda
done
cp docs/benchmarks/*_cuda.csv docs/benchmarks/*_cuda.png "$OUT/" 2>/dev/null
exit "$status"
