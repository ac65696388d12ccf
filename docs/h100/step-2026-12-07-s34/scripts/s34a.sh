#!/usr/bin/env bash
# every gpu-marked test (s29a.sh), then the in-process compile test with the trainer's
# dynamo reset taken out of a copy of the tree: that run must fail
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}; mkdir -p "$OUT"
T=${T:-420} bash gpu_work/s29a.sh
echo "recompile_limit lines: $(grep -c recompile_limit "$OUT/gpu_tests.log")"
bash gpu_work/s34m.sh
