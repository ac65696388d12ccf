#!/usr/bin/env bash
# One GPU-machine session: the gpu-marked tests, then the full bench at the
# GPT-2 block shape, into $OUT (results.db, logs). Used for docs/results.md.
# Usage (from the project root on the GPU machine): bash tools/gpu_check.sh [pytest args]
# The tests run in GPU_WORKERS pytest workers (default 4), a test file a worker at a time:
# every gpu test of 2026-12-06 took 278 s that way on one H100, the 213 of 2026-12-07
# 313 s on another (pytest's own default, a worker a core, would put 16 processes on one
# GPU).
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}
mkdir -p "$OUT"
export RA_DB="$OUT/results.db" PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 -m pytest -q -m gpu -p no:cacheprovider -n "${GPU_WORKERS:-4}" --dist loadfile "$@" 2>&1 | tee "$OUT/gpu_tests.log" | tail -25
python3 -m racli bench --modes all --attn baseline,ra_v5,ra_v5_untied,ra_beta,sdpa_gate \
    --shape gpt2 --repeats 200 --warmup 30 2>&1 | tee "$OUT/bench_fp16.log"
