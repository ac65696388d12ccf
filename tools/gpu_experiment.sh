#!/usr/bin/env bash
# The matched-time experiments of docs/results.md on a 2-GPU machine: baseline vs ra_v5
# (part "ab") and the A/A check baseline vs baseline (part "aa"), GPT-2 124M, 2 seeds,
# 2 minutes per run, spread over GPUs 0 and 1. Reports, curves, the store and the logs
# land in $OUT (8 files: ab.md, ab-*.png, aa.md, aa-*.png, ra.db, logs.tgz).
#
# Usage (from the project root on the GPU machine):
#   bash tools/gpu_experiment.sh ab     # about 9 minutes
#   bash tools/gpu_experiment.sh aa     # about 9 minutes
#   bash tools/gpu_experiment.sh        # both (needs a call longer than 10 minutes)
# Each part is resumable: the same call again (machine still warm) skips finished runs
# and resumes interrupted ones; the store lives in $RA_EXPERIMENT_WORK (default
# ./.gpu_experiment, ignored by git). RA_DATA=DIR adds --data DIR (a prepared corpus:
# GPT-2 passes over the built-in one several times in 2 minutes).
set -uo pipefail
PART=${1:-all}
OUT=${OUT:-/tmp/ra_out}
WORK=${RA_EXPERIMENT_WORK:-$PWD/.gpu_experiment}
mkdir -p "$OUT" "$WORK"
export RA_DB="$WORK/ra.db" PYTHONUNBUFFERED=1
SETTINGS=(--seeds 1-2 --minutes 2 --model gpt2 --set model.vocab_size=50304 --devices 0,1
          --set experiment.calibration_max_s=60)
if [ -n "${RA_DATA:-}" ]; then SETTINGS+=(--data "$RA_DATA"); fi

{ nvidia-smi --query-gpu=index,name,driver_version,clocks.max.sm,power.limit --format=csv
  python3 -c "import pynvml" 2>/dev/null || echo "note: nvidia-ml-py is missing: no clock metrics"
} > "$WORK/gpus.txt" 2>&1
cat "$WORK/gpus.txt"

rc=0
if [ "$PART" = ab ] || [ "$PART" = all ]; then
  python3 -m racli experiment --attn baseline,ra_v5 "${SETTINGS[@]}" --report "$OUT/ab.md" \
    2>&1 | tee -a "$WORK/ab.log" || rc=1
fi
if [ "$PART" = aa ] || [ "$PART" = all ]; then
  python3 -m racli experiment --attn baseline,baseline "${SETTINGS[@]}" --report "$OUT/aa.md" \
    2>&1 | tee -a "$WORK/aa.log" || rc=1
fi
# one consistent file (WAL included) and the logs
python3 - "$RA_DB" "$OUT/ra.db" <<'PY'
import sqlite3, sys
src, dst = sqlite3.connect(sys.argv[1]), sqlite3.connect(sys.argv[2])
src.backup(dst)
dst.close(); src.close()
PY
tar czf "$OUT/logs.tgz" -C "$WORK" --ignore-failed-read gpus.txt ab.log aa.log ra_experiment_logs 2>/dev/null
python3 -m racli runs --db "$OUT/ra.db" --limit 20
exit $rc
