#!/usr/bin/env bash
# the compile pass on and off in one process: kernels, then the step
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}; mkdir -p "$OUT"
timeout 70 python3 gpu_work/s26_prof.py baseline+f32grads=false baseline 2>&1 | tee $OUT/prof.log | grep -A14 "^===== difference"
timeout 100 python3 tools/vs_nanogpt.py --nanogpt gpu_work/nanoGPT --rounds 3 --steps 10 \
  --arms nanogpt,baseline,baseline+f32grads=false 2>&1 | tee "$OUT/vs.log" | grep -vE '^\{'
