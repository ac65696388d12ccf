#!/usr/bin/env bash
# on any card: the checkout and card (s51_head.sh), the GELU kernel beside a copy of its
# bytes (s49b.sh), then the step against nanoGPT N times with --json (s51b.sh)
set -uo pipefail
OUT=${OUT:?}
OUT=$OUT bash gpu_work/s51_head.sh
s=$(date +%s); OUT=$OUT bash gpu_work/s49b.sh > "$OUT/s49b.log" 2>&1; echo "s49b $(( $(date +%s) - s )) s"; tail -40 "$OUT/s49b.log"
OUT=$OUT N=${N:-2} bash gpu_work/s51b.sh
