#!/usr/bin/env bash
# issue #25's acceptance tools on this main in one call; every file packed into one archive
set -uo pipefail
FINAL=${OUT:?}; export OUT=/tmp/ra_out; mkdir -p "$OUT"
git log -1 --format='%H %s' > "$OUT/head.txt" 2>/dev/null
sha256sum racli_models/*.py racli/training/*.py racli/bench/*.py tools/*.py > "$OUT/tree.txt" 2>/dev/null
T_VS=270 T_REC=80 T_BLOCK=150 BLOCK_BUDGET=120 bash tools/gpu_perf_run.sh gpu_work/nanoGPT
date -u | tee -a "$OUT/run.log"
tar -C "$OUT" -czf "$FINAL/s43a.tar.gz" . && cp "$OUT/run.log" "$FINAL/run.log"
