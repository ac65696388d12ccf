#!/usr/bin/env bash
# after s30c.sh on the same machine (the fa4 extra staged in /tmp/site2): issue #25's
# acceptance on this main, fa4 arm beside the defaults, the DSL's warning counted
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}; mkdir -p "$OUT"
export PYTHONPATH=$PYTHONPATH:/tmp/site2:/tmp/site2/nvidia_cutlass_dsl/dsl_packages
python3 -c 'from importlib.metadata import version as v; from racli_models import flash4; print("flash-attn-4", v("flash-attn-4"), "nvidia-cutlass-dsl", v("nvidia-cutlass-dsl-libs-base"), "problem:", flash4.problem())' 2>&1 | tee "$OUT/fa4.txt"
T_VS=290 T_REC=80 T_BLOCK=130 BLOCK_BUDGET=100 EXTRA_ARMS=ra_v5+sdpa=fa4 \
  bash tools/gpu_perf_run.sh gpu_work/nanoGPT > "$OUT/stdout.log" 2>&1
sed -n '/===== summary/,$p' "$OUT/stdout.log"
echo "DSL JitArgument lines: $(grep -c JitArgument "$OUT/stdout.log")"
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv
date -u
