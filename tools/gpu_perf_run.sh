#!/usr/bin/env bash
# One GPU call for the performance figures of docs/results.md: the reciprocity measures'
# cost (new and former defaults side by side), then ra's training step against nanoGPT's
# with and without the fused loss, each tool's log and JSON into $OUT.
# Usage (from the project root on the GPU machine):
#   bash tools/gpu_perf_run.sh NANOGPT_DIR
# NANOGPT_DIR is a nanoGPT checkout carried to the machine (e.g. under gpu_work/, which
# git ignores; name it in the device call's carry list). About 6-8 minutes on an H200.
set -uo pipefail
NANOGPT=${1:?usage: bash tools/gpu_perf_run.sh NANOGPT_DIR}
OUT=${OUT:-/tmp/ra_out}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv | tee "$OUT/gpu.txt"
python3 tools/reciprocity_cost.py --device cuda --previous --json 2>&1 \
  | tee "$OUT/reciprocity_cost.log" | tail -n 8
python3 tools/vs_nanogpt.py --nanogpt "$NANOGPT" --rounds 5 --bench-py \
  --arms nanogpt,baseline,ra_v5,baseline+fused_loss=true,ra_v5+fused_loss=true 2>&1 \
  | tee "$OUT/vs_nanogpt.log" | tail -n 9
