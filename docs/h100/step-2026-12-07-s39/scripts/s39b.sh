#!/usr/bin/env bash
# every gpu-marked test on this main, then the block's two compile groups call 1's budget left out
set -uo pipefail
OUT=${OUT:-/tmp/ra_out}; mkdir -p "$OUT"
sha256sum racli_models/*.py racli/training/*.py racli/bench/*.py tools/*.py > "$OUT/tree2.txt" 2>/dev/null
T=${T:-330} bash gpu_work/s29a.sh
echo "recompile_limit lines: $(grep -c recompile_limit $OUT/gpu_tests.log)"
timeout ${T_BLOCK:-230} python3 tools/perf_block.py --once --budget-s ${BLOCK_BUDGET:-210} --skip \
 "composed once,eager wall,ceilings,counts,copy floor,tile sweep,composition,block fp16 graph+eager,block bf16 graph+eager,block backend flash,block backend cudnn,block backend efficient,block amp,untied composition" \
 2>&1 | tee "$OUT/block_compile.log" | tail -n 40
date -u
