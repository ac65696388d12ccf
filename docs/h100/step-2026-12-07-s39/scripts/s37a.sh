#!/usr/bin/env bash
# acceptance tools on this main, then the step compared once more (its own log and JSON)
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}; mkdir -p "$OUT"
git log -1 --format='%H %s' > "$OUT/head.txt" 2>/dev/null
sha256sum racli_models/*.py racli/training/*.py tools/*.py > "$OUT/tree.txt" 2>/dev/null
T_VS=290 T_REC=80 T_BLOCK=130 BLOCK_BUDGET=100 bash tools/gpu_perf_run.sh gpu_work/nanoGPT
cp "$OUT"/vs_nanogpt.json "$OUT"/vs_first.json 2>/dev/null
timeout ${T_AGAIN:-200} python3 tools/vs_nanogpt.py --nanogpt gpu_work/nanoGPT --rounds 5 \
  --arms nanogpt,baseline,ra_v5 2>&1 | tee "$OUT/vs_repeat.log" | tail -n 12
mv "$OUT"/vs_nanogpt.json "$OUT"/vs_repeat.json 2>/dev/null; cp "$OUT"/vs_first.json "$OUT"/vs_nanogpt.json 2>/dev/null
date -u
