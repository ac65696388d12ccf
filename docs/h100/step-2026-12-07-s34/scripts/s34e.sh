#!/usr/bin/env bash
# the least of all: the new test alone, then the mutation check
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}; mkdir -p "$OUT"
{ date -u; nvidia-smi --query-gpu=name,uuid,driver_version,memory.total --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'; } 2>&1 | tee "$OUT/env.txt"
timeout ${T:-150} python3 -m pytest -q -m gpu -p no:cacheprovider -n 0 --durations=5 \
   "tests/test_train_gpu.py::test_cuda_runs_one_after_another_in_one_process_each_compile" 2>&1 | tee "$OUT/gpu_tests.log" | tail -n 20
bash gpu_work/s34m.sh
date -u
