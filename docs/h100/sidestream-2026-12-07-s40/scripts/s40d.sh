#!/usr/bin/env bash
# the side stream's wait, again: the late-poison test (kernels compiled before the checked call)
# on the former fused.py (it must fail), then on this one three times, then test_fused_gpu.py
set -uo pipefail
FINAL=${OUT:?}; export OUT=/tmp/ra_out; mkdir -p "$OUT"
{ date -u; nvidia-smi --query-gpu=name,uuid --format=csv; } 2>&1 | tee "$OUT/env.txt"
sha256sum racli_models/fused.py gpu_work/fused_old.py tests/test_fused_gpu.py | tee -a "$OUT/env.txt"
cp racli_models/fused.py /tmp/fused_new.py
PT="python3 -m pytest -q -m gpu -p no:cacheprovider -n 0"
echo "== former fused.py"
cp gpu_work/fused_old.py racli_models/fused.py
timeout 90 $PT tests/test_fused_gpu.py -k side_stream > "$OUT/old_side.log" 2>&1; echo "rc=$?"
grep -E "^(FAILED|E +assert|E +AssertionError)|passed|failed" "$OUT/old_side.log" | head -n 20
cp /tmp/fused_new.py racli_models/fused.py
echo "== this fused.py, three times"
for i in 1 2 3; do timeout 60 $PT tests/test_fused_gpu.py -k side_stream 2>&1 | tail -n 1; done | tee "$OUT/new_side.log"
echo "== test_fused_gpu.py"
timeout 150 $PT tests/test_fused_gpu.py 2>&1 | tee "$OUT/fused.log" | tail -n 2
date -u
tar -C "$OUT" -czf "$FINAL/s40d.tar.gz" .
