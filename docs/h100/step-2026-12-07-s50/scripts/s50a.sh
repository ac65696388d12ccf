#!/usr/bin/env bash
# on an H200: the GELU kernel beside a copy of its bytes (s49b.sh), then issue #25's
# acceptance tools (tools/gpu_perf_run.sh) into $OUT/acceptance
set -uo pipefail
OUT=${OUT:?}
git log -1 --format='%H %s' > "$OUT/head.txt" 2>&1
git ls-files -s | sha1sum >> "$OUT/head.txt"
nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.max.sm,power.limit --format=csv >> "$OUT/head.txt"
python3 -c 'import torch, triton, sys; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__, "python", sys.version.split()[0])' >> "$OUT/head.txt" 2>&1
cat "$OUT/head.txt"
s=$(date +%s); OUT=$OUT bash gpu_work/s49b.sh; echo "s49b $(( $(date +%s) - s )) s"
mkdir -p "$OUT/acceptance"
s=$(date +%s)
OUT=$OUT/acceptance T_VS=200 T_REC=70 T_BLOCK=140 BLOCK_BUDGET=110 bash tools/gpu_perf_run.sh gpu_work/nanoGPT 2>&1 | sed -n '/===== summary/,$p'
echo "acceptance $(( $(date +%s) - s )) s"
