#!/usr/bin/env bash
# the compile pass's gpu tests (tolerance mended), then issue #25's acceptance on this main
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}; mkdir -p "$OUT"
timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider -n 0 tests/test_compiler.py 2>&1 | tee "$OUT/test_compiler.log" | tail -n 4
T_BLOCK=${T_BLOCK:-170} BLOCK_BUDGET=${BLOCK_BUDGET:-130} EXTRA_ARMS=baseline+f32grads=false+adamwk=false \
  bash tools/gpu_perf_run.sh gpu_work/nanoGPT
date -u
