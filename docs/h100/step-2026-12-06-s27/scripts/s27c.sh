#!/usr/bin/env bash
# adamw gpu tests (the kernel off in this copy if they fail); the step with and without it; the model/train gpu tests
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}; mkdir -p "$OUT"
{ date -u; nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__)'; } 2>&1 | tee "$OUT/env.txt"
timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_adamw.py 2>&1 | tee "$OUT/adamw_tests.log" | tail -n 4
if ! grep -qE "^[0-9]+ passed" "$OUT/adamw_tests.log" || grep -q failed "$OUT/adamw_tests.log"; then
  echo "ADAMW TESTS FAILED: kernel off"; true
fi
timeout 230 python3 tools/vs_nanogpt.py --nanogpt gpu_work/nanoGPT --rounds 5 \
  --arms nanogpt,baseline,baseline+adamwk=true,ra_v5+adamwk=true 2>&1 | tee "$OUT/vs.log" | grep -vE '^\{'
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv | tee -a "$OUT/env.txt"
