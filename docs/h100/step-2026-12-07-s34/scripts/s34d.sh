#!/usr/bin/env bash
# the least: the new test, the compiled runs and the finished-run memory test, then the mutation check
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}; mkdir -p "$OUT"
{ date -u; nvidia-smi --query-gpu=name,uuid,driver_version,memory.total --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)'; } 2>&1 | tee "$OUT/env.txt"
timeout ${T:-240} python3 -m pytest -q -m gpu -p no:cacheprovider --durations=10 tests/test_train_gpu.py \
   -k "one_after_another or compile_bf16 or finished_run" 2>&1 | tee "$OUT/gpu_tests.log" | tail -n 30
bash gpu_work/s34m.sh
date -u
