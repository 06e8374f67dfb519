#!/usr/bin/env bash
# One call on the GPU machine: kernel and engine correctness, then kernel and engine timings.
# Usage (on the device, from the repo root): bash benchmarks/gpu_check.sh [throughput args...]
set -uo pipefail
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
out=${OUT:-out/gpu_check}
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, triton; print('torch', torch.__version__, 'transformers', transformers.__version__, 'triton', triton.__version__)"
run() { local name=$1; shift; echo "=== $name: $*"; local start=$SECONDS
  timeout "${PART_TIMEOUT:-240}" "$@" > "$out/$name.log" 2>&1; local rc=$?
  tail -n "${TAIL:-25}" "$out/$name.log"; echo "=== $name: exit $rc after $((SECONDS - start)) s"; }
run kernel_tests python3 -m pytest tests/test_kernels.py -q -m gpu -x -p no:cacheprovider
run engine_tests python3 -m pytest tests/test_gpu.py -q -s -x -p no:cacheprovider
TAIL=45 run kernel_bench python3 benchmarks/kernels.py
TAIL=40 run throughput python3 benchmarks/throughput.py --shape qwen3-0.6b "$@"
