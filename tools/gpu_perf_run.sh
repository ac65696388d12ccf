#!/usr/bin/env bash
# One GPU call for the performance figures of docs/results.md (issue #25's acceptance):
# ra's training step against nanoGPT's (tools/vs_nanogpt.py, with nanoGPT's bench.py), the
# reciprocity measures' cost (new and former defaults), and the attention block
# (tools/perf_block.py --once), each tool's output into $OUT/run.log and its JSON into $OUT.
# Usage (from the project root on the GPU machine):
#   bash tools/gpu_perf_run.sh NANOGPT_DIR
# NANOGPT_DIR is a nanoGPT checkout carried to the machine (e.g. under gpu_work/, which
# git ignores; name it in the device call's carry list). Optional environment:
#   PERF_STEP=profile,loss,eager   first run tools/perf_step.py with these parts
#   EXTRA_ARMS=baseline+graph=false  more vs_nanogpt arms after nanogpt,baseline,ra_v5
#   REC_ARGS=--split-ops  more options of tools/reciprocity_cost.py
#   BLOCK_BUDGET=150  BLOCK_SKIP='tile sweep,...'  perf_block's --budget-s and --skip
#   GPU_TESTS='tests/test_loss.py ...'  then run these files' gpu-marked tests (T_TEST s)
# Each tool runs under `timeout` (T_STEP, T_VS, T_REC, T_BLOCK seconds) so the call ends
# in time; about 8-9 minutes in all on an H200 with the defaults.
set -uo pipefail
NANOGPT=${1:?usage: bash tools/gpu_perf_run.sh NANOGPT_DIR}
OUT=${OUT:-/tmp/ra_out}
mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-.} PYTHONUNBUFFERED=1
LOG="$OUT/run.log"
{
  date -u
  nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit \
    --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda,
    "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__)'
} 2>&1 | tee "$LOG"
if [ -n "${PERF_STEP:-}" ]; then
  timeout "${T_STEP:-170}" python3 tools/perf_step.py --parts "$PERF_STEP" 2>&1 | tee -a "$LOG"
fi
timeout "${T_VS:-240}" python3 tools/vs_nanogpt.py --nanogpt "$NANOGPT" --rounds 5 --bench-py \
  --arms "nanogpt,baseline,ra_v5${EXTRA_ARMS:+,$EXTRA_ARMS}" 2>&1 | tee -a "$LOG"
# shellcheck disable=SC2086
timeout "${T_REC:-120}" python3 tools/reciprocity_cost.py --device cuda --previous ${REC_ARGS:-} 2>&1 \
  | tee -a "$LOG"
timeout "${T_BLOCK:-200}" python3 tools/perf_block.py --once --budget-s "${BLOCK_BUDGET:-150}" \
  --skip "${BLOCK_SKIP:-}" 2>&1 | tee -a "$LOG"
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv | tee -a "$LOG"
if [ -n "${GPU_TESTS:-}" ]; then
  # shellcheck disable=SC2086
  timeout "${T_TEST:-150}" python3 -m pytest -q -m gpu -p no:cacheprovider $GPU_TESTS 2>&1 \
    | tee -a "$LOG" | tail -n 15
fi
echo "===== summary"
grep -E '^(arm |nanogpt |baseline|ra_v5|nanoGPT bench)' "$LOG" | grep -v parameters
grep -E 'evaluation of|measure_batches=|could not be captured' "$LOG"
sed -n '/^best vs best/,/^$/p' "$LOG"
grep -E '^(fp16|bf16|amp) .*(cuda_graph|eager) ' "$LOG"
if [ -f "$OUT/perf_step.jsonl" ]; then
  grep -E '"part": "(profile|loss|ce_kernel)"' "$OUT/perf_step.jsonl" | cut -c1-400
fi
