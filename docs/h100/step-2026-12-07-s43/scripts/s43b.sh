#!/usr/bin/env bash
# the step against nanoGPT's, N times, each comparison in a process of its own; one archive back
set -uo pipefail
FINAL=${OUT:?}; export OUT=/tmp/ra_out; mkdir -p "$OUT"
{ date -u; nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__)'
  git log -1 --format='%H %s' 2>/dev/null; } 2>&1 | tee "$OUT/env_step.txt"
for i in $(seq 1 "${N:-3}"); do
  timeout "${T_VS:-170}" python3 tools/vs_nanogpt.py --nanogpt gpu_work/nanoGPT --rounds 5 --bench-py \
    --arms nanogpt,baseline,ra_v5 > "$OUT/vs_s$i.log" 2>&1
  tail -n 5 "$OUT/vs_s$i.log" | head -n 4
  mv "$OUT"/vs_nanogpt.json "$OUT"/vs_s$i.json 2>/dev/null
done
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv
date -u
tar -C "$OUT" -czf "$FINAL/s43b.tar.gz" .
