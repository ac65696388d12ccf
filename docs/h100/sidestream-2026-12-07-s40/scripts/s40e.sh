#!/usr/bin/env bash
# every gpu-marked test on this main but the 200-second minutes-budget one, four workers
set -uo pipefail
{ date -u; nvidia-smi --query-gpu=name,uuid --format=csv; git log -1 --format='%H %s' 2>/dev/null; } 2>&1 | tee "$OUT/env_e.txt"
sha256sum racli_models/fused.py tests/test_fused_gpu.py | tee -a "$OUT/env_e.txt"
FILES=$(grep -l "mark.gpu\|gpu = pytest" tests/test_*.py | tr '\n' ' ')
timeout ${T:-200} python3 -m pytest -q -m gpu -p no:cacheprovider -n 4 --dist loadfile \
  -k "not test_cuda_minutes_budget_and_throughput_agree_between_seeds" $FILES 2>&1 | tee "$OUT/gpu_tests_e.log" | tail -n 8
date -u
