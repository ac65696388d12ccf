#!/usr/bin/env bash
# the step against nanoGPT's, twice, in two processes (each its own JSON and log)
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}; mkdir -p "$OUT"
{ date -u; nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__)'
  git log -1 --format='%H %s' 2>/dev/null; } 2>&1 | tee "$OUT/env.txt"
sha256sum racli_models/*.py racli/training/*.py tools/*.py > "$OUT/tree.txt" 2>/dev/null
for i in 1 2; do
  timeout ${T_VS:-250} python3 tools/vs_nanogpt.py --nanogpt gpu_work/nanoGPT --rounds 5 --bench-py \
    --arms nanogpt,baseline,ra_v5 > "$OUT/vs_$i.log" 2>&1
  tail -n 5 "$OUT/vs_$i.log"
  mv "$OUT"/vs_nanogpt.json "$OUT"/vs_$i.json 2>/dev/null
done
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv
date -u
