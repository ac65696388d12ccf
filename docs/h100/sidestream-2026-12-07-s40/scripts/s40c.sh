#!/usr/bin/env bash
# the side stream's wait: the new late-poison test on the former fused.py (it must fail) and on
# this one (it must pass, five times); every gpu test of the fused kernels and the models; the
# block's CUDA-graph rows with each fused.py in a process of its own, twice
set -uo pipefail
FINAL=${OUT:?}; export OUT=/tmp/ra_out; mkdir -p "$OUT"
{ date -u; nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__)'; } 2>&1 | tee "$OUT/env.txt"
sha256sum racli_models/fused.py gpu_work/fused_old.py tests/test_fused_gpu.py | tee -a "$OUT/env.txt"
cp racli_models/fused.py /tmp/fused_new.py
PT="python3 -m pytest -q -m gpu -p no:cacheprovider"
echo "== former fused.py, late poison"
cp gpu_work/fused_old.py racli_models/fused.py
timeout 120 $PT tests/test_fused_gpu.py -k side_stream > "$OUT/old_side.log" 2>&1; echo "rc=$?"; tail -n 12 "$OUT/old_side.log"
cp /tmp/fused_new.py racli_models/fused.py
echo "== this fused.py, late poison, five times"
for i in $(seq 1 5); do timeout 60 $PT tests/test_fused_gpu.py -k side_stream 2>&1 | tail -n 1; done | tee "$OUT/new_side.log"
echo "== every gpu test of test_fused_gpu.py and test_models_gpu.py"
timeout 200 $PT tests/test_fused_gpu.py tests/test_models_gpu.py 2>&1 | tee "$OUT/fused_models.log" | tail -n 4
SKIP="composed once,eager wall,ceilings,counts,copy floor,tile sweep,composition,block backend flash,block backend cudnn,block backend efficient,block amp,untied composition,block fp16 compile,block bf16 compile"
for round in 1 2; do for v in old new; do
  if [ $v = old ]; then cp gpu_work/fused_old.py racli_models/fused.py; else cp /tmp/fused_new.py racli_models/fused.py; fi
  echo "== block, $v fused.py, round $round"
  timeout 60 python3 tools/perf_block.py --budget-s 45 --skip "$SKIP" > "$OUT/block_${v}_$round.log" 2>&1
  grep -E '^(fp16|bf16) +auto +cuda_graph' "$OUT/block_${v}_$round.log"
done; done
cp /tmp/fused_new.py racli_models/fused.py
date -u
tar -C "$OUT" -czf "$FINAL/s40c.tar.gz" .
