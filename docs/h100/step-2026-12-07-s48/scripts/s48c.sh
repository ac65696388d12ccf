#!/usr/bin/env bash
# the GELU forward kernel with erf's argument written both ways (Triton source, PTX, time),
# beside a copy of the same bytes and F.gelu alone; then vs_nanogpt with the energy's
# standard deviation from the counter's steps
set -uo pipefail
OUT=${OUT:?}
{ date -u; nvidia-smi --query-gpu=name,uuid --format=csv,noheader
  for v in on off on off; do timeout 120 python3 gpu_work/s48_erf_ptx.py $v 2>&1 | grep -vE "warn"; done
  date -u; } 2>&1 | tee "$OUT/erf_ptx.log"
timeout 100 python3 tools/vs_nanogpt.py --nanogpt gpu_work/nanoGPT --rounds 5 --arms nanogpt,baseline > "$OUT/vs_sd.log" 2>&1
echo "vs rc $?"; grep -vE '^\{|UserWarning|warn|parameters' "$OUT/vs_sd.log" | tail -n 7
