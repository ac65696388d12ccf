#!/usr/bin/env bash
# the step against nanoGPT N times (3 unless N is set), each its own process, each writing its figures
# to its own file with --json
set -uo pipefail
OUT=${OUT:?}
for i in $(seq 1 "${N:-3}"); do
  s=$(date +%s)
  python3 tools/vs_nanogpt.py --nanogpt gpu_work/nanoGPT --rounds 5 --arms nanogpt,baseline,ra_v5 --json "$OUT/vs$i.json" > "$OUT/vs$i.log" 2>&1
  echo "run $i rc $? $(( $(date +%s) - s )) s"
  tail -25 "$OUT/vs$i.log"
done
ls -la "$OUT"
