#!/usr/bin/env bash
# the AdamW kernel's gpu tests; the step with and without it (a short call)
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}; mkdir -p "$OUT"
{ date -u; nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__)'; } 2>&1 | tee "$OUT/env.txt"
timeout 60 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_adamw.py 2>&1 | tee "$OUT/adamw_tests.log" | tail -n 4
timeout 150 python3 tools/vs_nanogpt.py --nanogpt gpu_work/nanoGPT --rounds 5 --steps 15 \
  --arms nanogpt,baseline,baseline+adamwk=true 2>&1 | tee "$OUT/vs.log" | grep -vE '^\{'
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv | tee -a "$OUT/env.txt"
