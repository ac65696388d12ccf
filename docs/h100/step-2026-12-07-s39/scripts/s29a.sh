#!/usr/bin/env bash
# the whole gpu-marked suite on this main (AdamW kernel and f32-grads pass on), four workers
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}; mkdir -p "$OUT"
{ date -u; nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__)'
  git log -1 --format='%H %s' 2>/dev/null; } 2>&1 | tee "$OUT/env.txt"
FILES=$(grep -l "mark.gpu\|gpu = pytest" tests/test_*.py | tr '\n' ' ')
echo "$FILES"
timeout ${T:-540} python3 -m pytest -q -m gpu -p no:cacheprovider -n ${W:-4} --dist loadfile --durations=20 $FILES 2>&1 | tee "$OUT/gpu_tests.log" | tail -n 60
date -u
