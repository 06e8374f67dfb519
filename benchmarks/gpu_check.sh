#!/usr/bin/env bash
# One call on the GPU machine: kernel and engine correctness, a step profile, then the
# throughput benchmark. Usage (on the device, from the repo root):
#   bash benchmarks/gpu_check.sh [throughput.py args...]
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
out=${OUT:-out/gpu_check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
run() { local name=$1; shift; echo "=== $name: $*"; local start=$SECONDS
  timeout "${PART_TIMEOUT:-240}" "$@" > "$out/$name.log" 2>&1; local rc=$?
  tail -n "${TAIL:-25}" "$out/$name.log"; echo "=== $name: exit $rc after $((SECONDS - start)) s"; }
[ -n "${SKIP_TESTS:-}" ] || {
  TAIL=4 run kernel_tests python3 -m pytest -o addopts="" tests/test_kernels.py -q -m gpu -x -p no:cacheprovider
  TAIL=12 CUBLAS_WORKSPACE_CONFIG=:4096:8 run engine_tests python3 -m pytest -o addopts="" tests/test_gpu.py -q -s -x -p no:cacheprovider; }
[ -n "${SKIP_PROFILE:-}" ] || TAIL=20 run profile python3 benchmarks/profile_step.py
[ -n "${KERNEL_BENCH:-}" ] && TAIL=45 run kernel_bench python3 benchmarks/kernels.py
TAIL=${THROUGHPUT_TAIL:-30} run throughput python3 benchmarks/throughput.py --shape qwen3-0.6b "$@"
